package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
)

var (
	phaseLine = regexp.MustCompile(`(?m)^phase: (\S+)`)
	sdsLine   = regexp.MustCompile(`(?m)^sds: (\d+) of (\d+) hold the new root`)
	newRoot   = regexp.MustCompile(`(?m)^new root: +sha256 ([0-9a-f]+)`)
)

// rotate runs 'warden ca rotate' and returns its output.
func rotate(t *testing.T, data string, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, append([]string{"ca", "rotate", "--data-dir", data}, args...)...)
	if code != 0 {
		t.Fatalf("ca rotate %s: %d %s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// waitStatus polls 'ca rotate --status' until cond holds.
func waitStatus(t *testing.T, data string, d time.Duration, what string, cond func(string) bool) string {
	t.Helper()
	var out string
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if out = rotate(t, data, "--status"); cond(out) {
			return out
		}
	}
	t.Fatalf("timed out waiting for %s:\n%s", what, out)
	return ""
}

// agentFor runs 'warden agent' for ns/sa, writing its files to a
// directory the demo workloads read, and waits for them.
func agentFor(t *testing.T, ctx context.Context, wg *sync.WaitGroup, m *meshFixture, ns, sa string) string {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", m.data, "--ns", ns, "--sa", sa, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	tf := filepath.Join(m.dir, sa+".token")
	os.WriteFile(tf, []byte(tok), 0o600)
	out := filepath.Join(m.dir, "agent-"+sa)
	logs := &syncBuffer{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		app.Run(ctx, []string{"agent", "--ca", m.addr, "--root-cert", filepath.Join(m.data, "root-cert.pem"), "--token-file", tf,
			"--sds-socket", filepath.Join(m.dir, sa+"-sds.sock"), "--workload-api-socket", "", "--output-dir", out}, logs, logs)
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent %s:\n%s", sa, logs.String())
		}
	})
	waitFile(t, filepath.Join(out, "cert-chain.pem"))
	return out
}

// TestRootRotationUnderTraffic: proxyless gRPC workloads (grpc-go's xDS
// client and server, certificates from 'warden agent' files) call each
// other over mTLS, a new connection and TLS handshake per call, every
// 25 ms, while the self-signed root goes through a whole rotation with
// 'warden ca rotate': prepare, publish (activation then waits for both
// agents to hold the new root, and for --rotation-grace), activate (the
// agents renew at once), retire (after the old key's last leaf expired).
// No call fails, and at the end the workloads' certificates chain to the
// new root only.
func TestRootRotationUnderTraffic(t *testing.T) {
	m := startMeshWith(t, nil, nil, []string{"--default-ttl", "20s", "--max-ttl", "20s", "--rotation-grace", "6s", "--auto-rotate-root", "0"})
	oldRoot, err := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	flask := agentFor(t, ctx, &wg, m, "default", "flaskapp")
	sleep := agentFor(t, ctx, &wg, m, "default", "sleep")
	node := func(ip, pod string) string { return "sidecar~" + ip + "~" + pod + ".default~default.svc.cluster.local" }
	for v, ip := range map[string]string{"v1": "127.0.0.2", "v2": "127.0.0.3"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out syncBuffer
			app.Run(ctx, []string{"demo", "server", "--xds", m.addr, "--node", node(ip, "flaskapp-"+v), "--certs", flask,
				"--listen", net.JoinHostPort(ip, m.port), "--version", v}, &out, &out)
		}()
	}
	clientCtx, stopClient := context.WithCancel(ctx)
	calls := make(chan string, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var out, errOut syncBuffer
		app.Run(clientCtx, []string{"demo", "client", "--xds", m.addr, "--node", node("127.0.0.4", "sleep"), "--certs", sleep,
			"--target", "xds:///flaskapp.default.svc.cluster.local:" + m.port, "-n", "100000", "--every", "25ms", "--new-conn"}, &out, &errOut)
		calls <- out.String()
	}()
	time.Sleep(2 * time.Second)

	out := rotate(t, m.data, "publish")
	if !strings.Contains(out, "phase: published") {
		t.Fatalf("publish:\n%s", out)
	}
	next := newRoot.FindStringSubmatch(out)[1]
	waitStatus(t, m.data, 20*time.Second, "both agents to hold the new root", func(s string) bool {
		h := sdsLine.FindStringSubmatch(s)
		return h != nil && h[1] == "2" && h[2] == "2"
	})
	out = rotate(t, m.data, "activate")
	if !strings.Contains(out, "activation waits until") {
		t.Errorf("activation did not wait for --rotation-grace:\n%s", out)
	}
	waitStatus(t, m.data, 20*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	rotate(t, m.data, "retire")
	waitStatus(t, m.data, 40*time.Second, "retirement", func(s string) bool { return strings.Contains(s, "current root: sha256 "+next) })
	time.Sleep(3 * time.Second) // traffic on the new root alone
	stopClient()
	got := <-calls

	ok := strings.Count(got, "(mTLS to spiffe://cluster.local/ns/default/sa/flaskapp; server saw spiffe://cluster.local/ns/default/sa/sleep)")
	var failed []string
	for _, l := range strings.Split(got, "\n") {
		if strings.HasPrefix(l, "call ") && !strings.Contains(l, "(mTLS to") {
			failed = append(failed, l)
		}
	}
	t.Logf("%d calls over mTLS through the rotation, %d failed", ok, len(failed))
	if len(failed) > 0 || ok < 300 {
		t.Fatalf("%d calls succeeded, %d failed, e.g.:\n%s", ok, len(failed), strings.Join(first(failed, 10), "\n"))
	}

	// The end: the data directory's root and both workloads' certificates
	// are the new root's alone.
	rootPEM, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil || len(roots) != 1 || string(rootPEM) == string(oldRoot) {
		t.Fatalf("root-cert.pem after the rotation: %d roots, %v", len(roots), err)
	}
	olds, _ := ca.ParseCerts(oldRoot)
	for _, dir := range []string{flask, sleep} {
		for _, f := range []string{"cert-chain.pem", "root-cert.pem"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			certs, err := ca.ParseCerts(b)
			if err != nil {
				t.Fatal(err)
			}
			if f == "root-cert.pem" {
				if len(certs) != 1 || !certs[0].Equal(roots[0]) {
					t.Errorf("%s: the bundle is not the new root alone", filepath.Join(dir, f))
				}
				continue
			}
			if err := verifies(certs, roots[0]); err != nil {
				t.Errorf("%s does not chain to the new root: %v", filepath.Join(dir, f), err)
			}
			if verifies(certs, olds[0]) == nil {
				t.Errorf("%s still chains to the old root", filepath.Join(dir, f))
			}
		}
	}
}

func verifies(chain []*x509.Certificate, root *x509.Certificate) error {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(root)
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func first(xs []string, n int) []string {
	if len(xs) > n {
		return append(xs[:n:n], fmt.Sprintf("... and %d more", len(xs)-n))
	}
	return xs
}

// TestActivationWaitsForASilentConsumer: a central SDS stream that took
// the bundle before the rotation but never ACKs the one with the new
// root holds activation back, and 'ca rotate --status' names it; once it
// is gone, activation proceeds.
func TestActivationWaitsForASilentConsumer(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	addr, _ := serve(t, data, "--rotation-grace", "0s", "--auto-rotate-root", "0")
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "shop", "--sa", "cart")
	if code != 0 {
		t.Fatal(stderr)
	}
	pool := x509.NewCertPool()
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(tok)))
	defer cancel()
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"ROOTCA"}
	if err := s.Send(&discovery.DiscoveryRequest{ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// ACK the current bundle; from now on, silence.
	if err := s.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	rotate(t, data, "activate")
	out := waitStatus(t, data, 10*time.Second, "activation to wait for the silent stream", func(s string) bool {
		return strings.Contains(s, "activation waits for 1 of 1 consumers") && strings.Contains(s, "missing: spiffe://cluster.local/ns/shop/sa/cart (sds stream")
	})
	if phaseLine.FindStringSubmatch(out)[1] != "published" {
		t.Fatalf("activated although a consumer lacks the new root:\n%s", out)
	}
	cancel() // the stream goes away
	waitStatus(t, data, 10*time.Second, "activation once the stream is gone", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
}
