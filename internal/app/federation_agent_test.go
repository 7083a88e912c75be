package app_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/sds"
)

// federationFixture is serve with a relationship with partner.test (a
// go-spiffe bundle endpoint, not warden) for namespace default.
func federationFixture(t *testing.T, extra ...string) (dir, data, addr string, peer *foreignPeer) {
	t.Helper()
	dir = t.TempDir()
	data = filepath.Join(dir, "data")
	peer = startForeignPeer(t, "127.0.0.1:0")
	os.WriteFile(filepath.Join(dir, "partner.pem"), ca.EncodeCerts(peer.m.Roots...), 0o600)
	fedFile := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fedFile, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://`+peer.addr+`/bundle
  bundleEndpointProfile:
    type: https_spiffe
    endpointSPIFFEID: spiffe://partner.test/bundle-server
  trustDomainBundleFile: partner.pem
  namespaces: [default]
`), 0o600)
	addr = testkit.FreeAddr(t)
	serveAt(t, data, addr, append([]string{"--federation-file", fedFile, "--federation-min-refresh", "1s"}, extra...)...)
	return dir, data, addr, peer
}

// startAgent runs warden agent for ns/sa (a token minted from the data
// directory) with its sockets and files under dir/<sa>.
func startAgent(t *testing.T, dir, data, addr, ns, sa string) (sdsSock, wSock, out string) {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", ns, "--sa", sa)
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	base := filepath.Join(dir, sa)
	os.MkdirAll(base, 0o700)
	tokFile := filepath.Join(base, "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	sdsSock, wSock, out = filepath.Join(base, "sds.sock"), filepath.Join(base, "w.sock"), filepath.Join(base, "out")
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tokFile,
			"--sds-socket", sdsSock, "--workload-api-socket", wSock, "--output-dir", out}, &logs, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("agent exited %d:\n%s", code, logs.String())
		}
	})
	waitFile(t, sdsSock)
	return sdsSock, wSock, out
}

// agentBundles asks the agent's SDS socket for names and returns each
// validation context's roots by name.
func agentBundles(t *testing.T, sock string, names ...string) (map[string][]*x509.Certificate, error) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := sdsFirst(ctx, conn, "sidecar~127.0.0.1~x.default~default.svc.cluster.local", names...)
	if err != nil {
		return nil, err
	}
	return validationRoots(t, resp), nil
}

// bundleMap reads the agent's SPIFFE bundle map as grpc-go does: bare
// trust domain names, each a SPIFFE bundle.
func bundleMap(t *testing.T, out string) map[string][]*x509.Certificate {
	t.Helper()
	var doc struct {
		TrustDomains map[string]json.RawMessage `json:"trust_domains"`
	}
	b, err := os.ReadFile(filepath.Join(out, sds.FileBundleMap))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	m := map[string][]*x509.Certificate{}
	for name, raw := range doc.TrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			t.Fatalf("bundle map key %q is not a bare trust domain name", name)
		}
		bundle, err := spiffebundle.Parse(td, raw)
		if err != nil {
			t.Fatalf("bundle map %s: %v", name, err)
		}
		m[name] = bundle.X509Authorities()
	}
	return m
}

// TestFederationAgentRelays: warden agent relays the foreign bundles its
// workload's namespace federates with, as the CA's central SDS sends
// them: on its SDS socket by name (spiffe://partner.test) with ROOTCA
// still the local bundle alone, in the Workload API's federated bundles,
// and in the SPIFFE bundle map file for proxyless gRPC; the peer's new
// root reaches all three. An agent of a namespace that does not federate
// relays nothing, and its SDS refuses the name.
func TestFederationAgentRelays(t *testing.T) {
	dir, data, addr, peer := federationFixture(t)
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	local, _ := ca.ParseCerts(rootPEM)
	sock, wSock, out := startAgent(t, dir, data, addr, "default", "sleep")
	otherSock, _, otherOut := startAgent(t, dir, data, addr, "other", "intruder")

	var got map[string][]*x509.Certificate
	testkit.Eventually(t, 15*time.Second, func() error {
		var err error
		got, err = agentBundles(t, sock, "default", "ROOTCA", "spiffe://partner.test", "spiffe://cluster.local")
		return err
	})
	if !ca.SameRoots(got["ROOTCA"], local) || !ca.SameRoots(got["spiffe://cluster.local"], local) {
		t.Fatalf("the agent's ROOTCA holds %d roots: not the local bundle alone", len(got["ROOTCA"]))
	}
	if !ca.SameRoots(got["spiffe://partner.test"], peer.m.Roots) {
		t.Fatalf("the agent's spiffe://partner.test holds %d roots: not the peer's", len(got["spiffe://partner.test"]))
	}

	// The Workload API: federated bundles, each under its trust domain;
	// go-spiffe's verification with them refuses a local ID the foreign
	// CA signed and accepts the foreign CA's own IDs.
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	x, err := workloadapi.FetchX509Context(wctx, workloadapi.WithAddr("unix://"+wSock))
	if err != nil {
		t.Fatal(err)
	}
	pb, err := x.Bundles.GetX509BundleForTrustDomain(partnerTD)
	if err != nil || !ca.SameRoots(pb.X509Authorities(), peer.m.Roots) {
		t.Fatalf("Workload API: partner.test bundle: %v", err)
	}
	if lb, err := x.Bundles.GetX509BundleForTrustDomain(localTD); err != nil || !ca.SameRoots(lb.X509Authorities(), local) {
		t.Fatalf("Workload API: the local bundle is not the local roots alone: %v", err)
	}
	forged := peer.forge(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/x"))
	if _, _, err := x509svid.Verify([]*x509.Certificate{forged}, x.Bundles); err == nil {
		t.Fatal("the Workload API's bundles accept a local identity the foreign CA signed")
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{peer.forge(t, spiffeid.RequireFromString("spiffe://partner.test/ns/a/sa/b"))}, x.Bundles); err != nil {
		t.Fatalf("the Workload API's bundles refuse a partner.test SVID: %v", err)
	}

	// The bundle map, bare trust domain names.
	testkit.Eventually(t, 10*time.Second, func() error {
		m := bundleMap(t, out)
		if len(m) != 2 || !ca.SameRoots(m["cluster.local"], local) || !ca.SameRoots(m["partner.test"], peer.m.Roots) {
			return fmt.Errorf("bundle map: %v", slices.Sorted(maps.Keys(m)))
		}
		return nil
	})

	// Not federating: nothing relayed, the name refused.
	if _, err := agentBundles(t, otherSock, "default", "spiffe://partner.test"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("namespace other's agent for spiffe://partner.test: %v, want PermissionDenied", err)
	}
	waitFile(t, filepath.Join(otherOut, sds.FileBundleMap))
	if m := bundleMap(t, otherOut); len(m) != 1 || !ca.SameRoots(m["cluster.local"], local) {
		t.Fatalf("namespace other's bundle map: %v", slices.Sorted(maps.Keys(m)))
	}

	// The peer adds a root: the agent relays both.
	_, both := peer.publishNextRoot(t)
	testkit.Eventually(t, 20*time.Second, func() error {
		got, err := agentBundles(t, sock, "default", "spiffe://partner.test")
		if err != nil {
			return err
		}
		if !ca.SameRoots(got["spiffe://partner.test"], both) {
			return fmt.Errorf("spiffe://partner.test holds %d roots, want 2", len(got["spiffe://partner.test"]))
		}
		if m := bundleMap(t, out); !ca.SameRoots(m["partner.test"], both) {
			return fmt.Errorf("bundle map partner.test holds %d roots", len(m["partner.test"]))
		}
		return nil
	})
}
