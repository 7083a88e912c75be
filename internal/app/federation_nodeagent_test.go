package app_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
	sdsserver "github.com/wardenmesh/warden/sds/server"
)

// mintToken is a token for ns/sa from the data directory.
func mintToken(t *testing.T, data, ns, sa string) string {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", ns, "--sa", sa)
	if code != 0 {
		t.Fatalf("token: %d %s", code, stderr)
	}
	return strings.TrimSpace(tok)
}

// startNodeAgent runs warden agent --node-agent with its socket under
// dir/node, and returns a client of that socket and the agent's log.
func startNodeAgent(t *testing.T, dir, data, addr string, extra ...string) (*grpc.ClientConn, *syncBuffer) {
	t.Helper()
	sock := filepath.Join(dir, "node", "sds.sock")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, append([]string{"agent", "--node-agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"),
			"--sds-socket", sock, "--workload-api-socket", ""}, extra...), logs, logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("node agent exited %d:\n%s", code, logs.String())
		}
	})
	waitFile(t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, logs
}

// nodeAgentWatch is a caller's SDS stream on a node agent that ACKs
// every response, as Envoy does; its responses arrive on resps.
type nodeAgentWatch struct {
	resps  chan *discovery.DiscoveryResponse
	cancel context.CancelFunc
}

// watchNodeAgent opens a stream with tok for names; fed sets the node
// metadata that asks for the foreign bundles without naming them.
func watchNodeAgent(t *testing.T, conn *grpc.ClientConn, tok string, fed bool, names ...string) *nodeAgentWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok))
	t.Cleanup(cancel)
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~127.0.0.1~x.ns~ns.svc.cluster.local"}
	if fed {
		node.Metadata, _ = structpb.NewStruct(map[string]any{sdsserver.FederatedBundlesKey: true})
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: node, ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	w := &nodeAgentWatch{resps: make(chan *discovery.DiscoveryResponse, 100), cancel: cancel}
	go func() {
		defer close(w.resps)
		for {
			resp, err := s.Recv()
			if err != nil {
				return
			}
			w.resps <- resp
			if s.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: resource.SecretType}) != nil {
				return
			}
		}
	}()
	return w
}

// until reads w's responses until ok holds for one (its bundles by
// name), failing after d or if the stream ends.
func (w *nodeAgentWatch) until(t *testing.T, d time.Duration, what string, ok func(map[string][]*x509.Certificate) bool) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case resp, open := <-w.resps:
			if !open {
				t.Fatalf("%s: the stream ended", what)
			}
			if ok(validationRoots(t, resp)) {
				return
			}
		case <-timeout:
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// TestNodeAgentRelaysFederationPerNamespace: a node agent serving two
// namespaces, default federating with partner.test and other not, relays
// partner.test's bundle to default's caller alone: by name, and without
// naming it on a bundle stream that asks for the foreign bundles; other's
// caller is refused the name and receives it on no stream. The peer's new
// root reaches default's caller; the relationship edited to add other,
// other's caller follows. The node agent keeps one bundle stream to the
// CA per namespace (the CA counts two) and closes other's once the last
// identity of other has left its cache (the CA counts one); other's
// caller coming back with the token the node agent remembers gets a
// certificate again.
func TestNodeAgentRelaysFederationPerNamespace(t *testing.T) {
	httpAddr := testkit.FreeAddr(t)
	dir, data, addr, peer := federationFixture(t, "--http-listen", httpAddr)
	caStreams := func() float64 { return scrape(t, "http://"+httpAddr+"/metrics")["warden_sds_streams"] }
	mint := func(ns, sa string) string { return mintToken(t, data, ns, sa) }
	// A short --ttl: an identity no stream serves leaves the cache at its
	// next rotation, within seconds.
	conn, logs := startNodeAgent(t, dir, data, addr, "--ttl", "6s")
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	local, _ := ca.ParseCerts(rootPEM)
	sleep, intruder := mint("default", "sleep"), mint("other", "intruder")
	const partner = "spiffe://partner.test"

	// default: the name served in the stream's first answer, and the
	// bundle stream gets it unnamed; ROOTCA is the local bundle alone.
	named := watchNodeAgent(t, conn, sleep, false, "default", "ROOTCA", partner)
	named.until(t, 20*time.Second, "default's caller naming "+partner, func(got map[string][]*x509.Certificate) bool {
		if !ca.SameRoots(got[partner], peer.m.Roots) || !ca.SameRoots(got["ROOTCA"], local) {
			t.Fatalf("default's caller: %s holds %d roots, ROOTCA %d: want the peer's and the local bundle alone", partner, len(got[partner]), len(got["ROOTCA"]))
		}
		return true
	})
	sleepBundles := watchNodeAgent(t, conn, sleep, true, "ROOTCA")
	sleepBundles.until(t, 10*time.Second, "default's bundle stream", func(got map[string][]*x509.Certificate) bool {
		return ca.SameRoots(got[partner], peer.m.Roots)
	})

	// other: refused the name; its bundle stream gets ROOTCA alone, and
	// keeps getting nothing of partner.test (checked below, until other
	// federates).
	refuse := func(what string) {
		t.Helper()
		c, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+intruder), 20*time.Second)
		defer cancel()
		_, err := sdsFirst(c, conn, "n", "default", partner)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "does not federate with trust domain partner.test") {
			t.Fatalf("%s: other's caller naming %s: %v, want PermissionDenied", what, partner, err)
		}
	}
	refuse("at first")
	otherCerts := watchNodeAgent(t, conn, intruder, false, "default", "ROOTCA")
	otherBundles := watchNodeAgent(t, conn, intruder, true, "ROOTCA")
	otherBundles.until(t, 10*time.Second, "other's bundle stream", func(got map[string][]*x509.Certificate) bool {
		if len(got) != 1 || !ca.SameRoots(got["ROOTCA"], local) {
			t.Fatalf("other's bundle stream got %v, want ROOTCA alone", slices.Sorted(maps.Keys(got)))
		}
		return true
	})
	testkit.Eventually(t, 10*time.Second, func() error {
		if n := caStreams(); n != 2 {
			return fmt.Errorf("the CA counts %v SDS streams, want 2 (one bundle stream per namespace)", n)
		}
		return nil
	})

	// The peer's root rotates: pushed to default's caller, on both
	// streams; other's gets nothing of it.
	_, both := peer.publishNextRoot(t)
	for what, w := range map[string]*nodeAgentWatch{"default's named stream": named, "default's bundle stream": sleepBundles} {
		w.until(t, 20*time.Second, what+" after the peer's rotation", func(got map[string][]*x509.Certificate) bool {
			return ca.SameRoots(got[partner], both)
		})
	}
	refuse("after the peer's rotation")
	drain := func(w *nodeAgentWatch) {
		t.Helper()
		for {
			select {
			case resp := <-w.resps:
				if resp == nil {
					return
				}
				if _, ok := validationRoots(t, resp)[partner]; ok {
					t.Fatalf("other's caller received %s", partner)
				}
			default:
				return
			}
		}
	}
	drain(otherCerts)
	drain(otherBundles)

	// other added to the relationship: other's bundle stream gets the
	// bundle, and the name is served.
	os.WriteFile(filepath.Join(dir, "federation.yaml"), []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://`+peer.addr+`/bundle
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: "spiffe://partner.test/bundle-server"}
  trustDomainBundleFile: partner.pem
  namespaces: [default, other]
`), 0o600)
	otherBundles.until(t, 20*time.Second, "other's bundle stream after the edit", func(got map[string][]*x509.Certificate) bool {
		return ca.SameRoots(got[partner], both)
	})
	c, cancelNamed := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+intruder), 20*time.Second)
	resp, err := sdsFirst(c, conn, "n", "default", partner)
	cancelNamed()
	if err != nil || !ca.SameRoots(validationRoots(t, resp)[partner], both) {
		t.Fatalf("other's caller naming %s after the edit: %v", partner, err)
	}

	// other's streams close: once its identity has left the node agent's
	// cache, its bundle stream to the CA closes; default's stays. (A
	// stream is reopened when its SVID expires, so the count is read
	// over a window.)
	otherCerts.cancel()
	otherBundles.cancel()
	testkit.Eventually(t, 40*time.Second, func() error {
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if n := caStreams(); n > 1 {
				return fmt.Errorf("the CA counts %v SDS streams, want 1 (default's) once other's identity has left", n)
			}
		}
		return nil
	})
	if !strings.Contains(logs.String(), `no identity of the namespace is left: its trust bundle stream to the CA is closed" namespace=other`) {
		t.Errorf("the node agent did not log closing other's stream:\n%s", logs.String())
	}
	named.until(t, 20*time.Second, "default's caller after other left", func(got map[string][]*x509.Certificate) bool {
		return ca.SameRoots(got[partner], both) // still served (a renewal's push)
	})
	testkit.Eventually(t, 10*time.Second, func() error {
		if n := caStreams(); n != 1 {
			return fmt.Errorf("the CA counts %v SDS streams, want default's bundle stream", n)
		}
		return nil
	})

	// other's caller comes back with the same token, which the node agent
	// remembers: its identity was dropped, so the CA is asked again, and
	// the stream gets a certificate and its namespace's bundle.
	back := watchNodeAgent(t, conn, intruder, false, "default", partner)
	back.until(t, 20*time.Second, "other's caller back", func(got map[string][]*x509.Certificate) bool {
		return ca.SameRoots(got[partner], both)
	})
}

// TestNodeAgentFollowsRootRotation: a node agent follows the trust bundle
// over its namespaces' streams to the CA: a root published reaches its
// callers' ROOTCA at once, not with their next certificate, and the CA
// counts those streams (one per namespace) among the consumers a
// rotation waits for, each holding the new root only once it reached the
// callers.
func TestNodeAgentFollowsRootRotation(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	conn, _ := startNodeAgent(t, dir, data, addr)
	var callers []*nodeAgentWatch
	for _, who := range [][2]string{{"default", "sleep"}, {"other", "app"}} {
		w := watchNodeAgent(t, conn, mintToken(t, data, who[0], who[1]), false, "default", "ROOTCA")
		w.until(t, 20*time.Second, who[0]+"'s caller", func(got map[string][]*x509.Certificate) bool { return len(got["ROOTCA"]) == 1 })
		callers = append(callers, w)
	}
	out := rotate(t, data, "publish")
	next := newRoot.FindStringSubmatch(out)
	if next == nil {
		t.Fatalf("publish:\n%s", out)
	}
	for i, w := range callers {
		w.until(t, 20*time.Second, fmt.Sprintf("caller %d's ROOTCA after publish", i), func(got map[string][]*x509.Certificate) bool {
			return len(got["ROOTCA"]) == 2 && slices.ContainsFunc(got["ROOTCA"], func(c *x509.Certificate) bool { return ca.Fingerprint(c) == next[1] })
		})
	}
	waitStatus(t, data, 20*time.Second, "the node agent's two streams to hold the new root", func(s string) bool {
		h := sdsLine.FindStringSubmatch(s)
		return h != nil && h[1] == "2" && h[2] == "2"
	})
}
