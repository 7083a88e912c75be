package app_test

import (
	"context"
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

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
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
func agentFor(t *testing.T, ctx context.Context, wg *sync.WaitGroup, m *meshFixture, root, ns, sa string) string {
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
		app.Run(ctx, []string{"agent", "--ca", m.addr, "--root-cert", root, "--token-file", tf,
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

// traffic is proxyless gRPC workloads (grpc-go's xDS client and server,
// certificates from 'warden agent' files) calling each other over mTLS,
// with a new connection and TLS handshake per call every 25 ms.
type traffic struct {
	flask, sleep string // the agents' output directories
	stop         func() string
}

func startTraffic(t *testing.T, m *meshFixture, root string) *traffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	tr := &traffic{flask: agentFor(t, ctx, &wg, m, root, "default", "flaskapp"), sleep: agentFor(t, ctx, &wg, m, root, "default", "sleep")}
	node := func(ip, pod string) string { return "sidecar~" + ip + "~" + pod + ".default~default.svc.cluster.local" }
	for v, ip := range map[string]string{"v1": "127.0.0.2", "v2": "127.0.0.3"} {
		demoServer(t, ctx, &wg, "--xds", m.addr, "--node", node(ip, "flaskapp-"+v), "--certs", tr.flask,
			"--listen", net.JoinHostPort(ip, m.port), "--version", v)
	}
	// Warm up (waiting for ready connections) so that the measured calls,
	// which do not wait, start once the servers serve.
	var warm, warmErr syncBuffer
	if code := app.Run(ctx, []string{"demo", "client", "--xds", m.addr, "--node", node("127.0.0.4", "sleep"), "--certs", tr.sleep,
		"--target", "xds:///flaskapp.default.svc.cluster.local:" + m.port, "-n", "3"}, &warm, &warmErr); code != 0 || strings.Count(warm.String(), "(mTLS to") != 3 {
		t.Fatalf("warm-up calls: %d\n%s%s", code, warm.String(), warmErr.String())
	}
	clientCtx, stopClient := context.WithCancel(ctx)
	calls := make(chan string, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var out, errOut syncBuffer
		app.Run(clientCtx, []string{"demo", "client", "--xds", m.addr, "--node", node("127.0.0.4", "sleep"), "--certs", tr.sleep,
			"--target", "xds:///flaskapp.default.svc.cluster.local:" + m.port, "-n", "100000", "--every", "25ms", "--new-conn"}, &out, &errOut)
		calls <- out.String()
	}()
	tr.stop = func() string { stopClient(); return <-calls }
	time.Sleep(2 * time.Second)
	return tr
}

// end stops the calls and checks that none failed.
func (tr *traffic) end(t *testing.T) {
	t.Helper()
	got := tr.stop()
	ok := strings.Count(got, "(mTLS to spiffe://cluster.local/ns/default/sa/flaskapp; server saw spiffe://cluster.local/ns/default/sa/sleep)")
	var failed, lines []string
	for _, l := range strings.Split(got, "\n") {
		if strings.HasPrefix(l, "call ") {
			lines = append(lines, l)
		}
	}
	for i, l := range lines {
		// The call in flight when the client is stopped is cancelled.
		if strings.Contains(l, "(mTLS to") || (i == len(lines)-1 && strings.Contains(l, "Canceled: context canceled")) {
			continue
		}
		failed = append(failed, l)
	}
	t.Logf("%d calls over mTLS through the rotation, %d failed", ok, len(failed))
	if len(failed) > 0 || ok < 300 {
		t.Fatalf("%d calls succeeded, %d failed, e.g.:\n%s", ok, len(failed), strings.Join(first(failed, 10), "\n"))
	}
}

// chainOnlyTo checks that both workloads' certificates and bundles are
// the new root's alone.
func (tr *traffic) chainOnlyTo(t *testing.T, root, old *x509.Certificate) {
	t.Helper()
	for _, dir := range []string{tr.flask, tr.sleep} {
		for _, f := range []string{"cert-chain.pem", "root-cert.pem"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			certs, err := ca.ParseCerts(b)
			if err != nil {
				t.Fatal(err)
			}
			if f == "root-cert.pem" {
				if len(certs) != 1 || !certs[0].Equal(root) {
					t.Errorf("%s: the bundle is not the new root alone", filepath.Join(dir, f))
				}
				continue
			}
			if err := verifies(certs, root); err != nil {
				t.Errorf("%s does not chain to the new root: %v", filepath.Join(dir, f), err)
			}
			if verifies(certs, old) == nil {
				t.Errorf("%s still chains to the old root", filepath.Join(dir, f))
			}
		}
	}
}

// TestRootRotationUnderTraffic: the workloads call each other while the
// self-signed root goes through a whole rotation with 'warden ca rotate':
// prepare, publish (activation then waits for both agents to hold the new
// root, and for --rotation-grace), activate (the agents renew at once),
// retire (after the old key's last leaf expired). No call fails, and at
// the end the workloads' certificates chain to the new root only.
func TestRootRotationUnderTraffic(t *testing.T) {
	m := startMeshWith(t, nil, nil, []string{"--default-ttl", "20s", "--max-ttl", "20s", "--rotation-grace", "6s", "--auto-rotate-root", "0"})
	oldRoot, err := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tr := startTraffic(t, m, filepath.Join(m.data, "root-cert.pem"))

	beforePublish := time.Now()
	out := rotate(t, m.data, "publish")
	if !strings.Contains(out, "phase: published") {
		t.Fatalf("publish:\n%s", out)
	}
	next := newRoot.FindStringSubmatch(out)[1]
	waitStatus(t, m.data, 20*time.Second, "both agents to hold the new root", func(s string) bool {
		h := sdsLine.FindStringSubmatch(s)
		return h != nil && h[1] == "2" && h[2] == "2"
	})
	// Activation must wait for the 6 s grace when it comes inside it: a
	// loaded machine may get here after the grace (a second's margin).
	inGrace := time.Since(beforePublish) < 5*time.Second
	out = rotate(t, m.data, "activate")
	switch waited := strings.Contains(out, "activation waits until"); {
	case inGrace && !waited:
		t.Errorf("activation did not wait for --rotation-grace:\n%s", out)
	case !inGrace:
		t.Logf("activate came %s after publish, past the grace: its wait not checked", time.Since(beforePublish).Round(time.Millisecond))
	}
	waitStatus(t, m.data, 20*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	rotate(t, m.data, "retire")
	waitStatus(t, m.data, 40*time.Second, "retirement", func(s string) bool {
		return strings.Contains(s, "phase: none") && strings.Contains(s, "signing root: sha256 "+next)
	})
	time.Sleep(3 * time.Second) // traffic on the new root alone
	tr.end(t)

	rootPEM, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	roots, err := ca.ParseCerts(rootPEM)
	if err != nil || len(roots) != 1 || string(rootPEM) == string(oldRoot) {
		t.Fatalf("root-cert.pem after the rotation: %d roots, %v", len(roots), err)
	}
	olds, _ := ca.ParseCerts(oldRoot)
	tr.chainOnlyTo(t, roots[0], olds[0])
}

// TestPluggedInRotationUnderTraffic: the same workloads while an operator
// rotates a plugged-in CA by editing its directory in three steps: the new
// root added to root-cert.pem (warden publishes it; the agents take it
// up), then the signing certificate and key replaced by an intermediate
// under the new root (warden signs with it and renews every certificate
// at once), then, once the old leaves have expired, the old root dropped.
// No call fails.
func TestPluggedInRotationUnderTraffic(t *testing.T) {
	dir := t.TempDir()
	plugged := filepath.Join(dir, "cacerts")
	mk := func(name string) (root, inter *ca.Material) {
		root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: name + " root", MaxPathLen: -1})
		if err != nil {
			t.Fatal(err)
		}
		inter, err = ca.NewIntermediate(root, ca.CAOptions{Organization: "cluster.local", CommonName: name + " intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
		if err != nil {
			t.Fatal(err)
		}
		return root, inter
	}
	rootA, interA := mk("A")
	rootB, interB := mk("B")
	fa, _ := interA.Encode()
	writePluggedIn(t, plugged, fa)
	m := startMeshWith(t, nil, nil, []string{"--plugged-in-dir", plugged, "--default-ttl", "20s", "--max-ttl", "20s"})
	tr := startTraffic(t, m, filepath.Join(plugged, "root-cert.pem"))
	put := func(name string, b []byte) {
		t.Helper()
		tmp := filepath.Join(plugged, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(plugged, name)); err != nil {
			t.Fatal(err)
		}
	}
	agentsHold := func(what string, cond func(roots, chain []*x509.Certificate) bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			all := true
			for _, d := range []string{tr.flask, tr.sleep} {
				rb, _ := os.ReadFile(filepath.Join(d, "root-cert.pem"))
				cb, _ := os.ReadFile(filepath.Join(d, "cert-chain.pem"))
				roots, _ := ca.ParseCerts(rb)
				chain, _ := ca.ParseCerts(cb)
				all = all && len(chain) > 0 && cond(roots, chain)
			}
			if all {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agents did not take up %s", what)
			}
		}
	}

	// 1. Publish: both roots trusted, A's intermediate still signs. The
	// status says which consumers hold which root.
	put("root-cert.pem", ca.EncodeCerts(rootA.Cert, rootB.Cert))
	agentsHold("the two-root bundle", func(roots, _ []*x509.Certificate) bool { return len(roots) == 2 })
	fpB := ca.Fingerprint(rootB.Cert)
	waitStatus(t, m.data, 10*time.Second, "both agents to hold root B", func(s string) bool {
		_, after, _ := strings.Cut(s, "bundle root sha256 "+fpB+" (trusted;")
		return strings.Contains(after, "sds: 2 of 2 hold the root")
	})
	if code, _, stderr := run(t, "ca", "rotate", "--data-dir", m.data, "publish"); code == 0 || !strings.Contains(stderr, "rotate it by editing them") {
		t.Errorf("ca rotate publish on a plugged-in CA: %d %s", code, stderr)
	}
	time.Sleep(6 * time.Second) // the workloads re-read their files every 5 s

	// 2. Activate: B's intermediate signs.
	fb, _ := interB.Encode()
	put("ca-key.pem", fb.CAKey)
	put("cert-chain.pem", append(ca.EncodeCerts(interB.Cert), ca.EncodeCerts(rootB.Cert)...))
	put("ca-cert.pem", fb.CACert)
	activated := time.Now()
	agentsHold("certificates under the new root", func(_, chain []*x509.Certificate) bool { return verifies(chain, rootB.Cert) == nil })

	// 3. Retire, once every leaf A's intermediate signed has expired.
	time.Sleep(time.Until(activated.Add(21 * time.Second)))
	put("root-cert.pem", ca.EncodeCerts(rootB.Cert))
	agentsHold("the new root alone", func(roots, _ []*x509.Certificate) bool { return len(roots) == 1 && roots[0].Equal(rootB.Cert) })
	time.Sleep(3 * time.Second)
	tr.end(t)
	tr.chainOnlyTo(t, rootB.Cert, rootA.Cert)
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
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	closeStream := testkit.SilentBundleStream(t, addr, rootPEM, strings.TrimSpace(tok))
	rotate(t, data, "activate")
	out := waitStatus(t, data, 10*time.Second, "activation to wait for the silent stream", func(s string) bool {
		return strings.Contains(s, "activation waits for 1 of 1 consumers") && strings.Contains(s, "missing: spiffe://cluster.local/ns/shop/sa/cart (sds stream")
	})
	if phaseLine.FindStringSubmatch(out)[1] != "published" {
		t.Fatalf("activated although a consumer lacks the new root:\n%s", out)
	}
	closeStream()
	waitStatus(t, data, 10*time.Second, "activation once the stream is gone", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
}

// TestCertRequestWritesTheWholeBundle: during a rotation the CA answers
// with both roots, and cert request writes both to root-cert.pem (what
// the workload trusts), as istiod's answer gives Istio's agent both.
func TestCertRequestWritesTheWholeBundle(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	tokFile := sleepTokenFile(t, dir, data)
	rootsIn := func(out string) int {
		t.Helper()
		code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--data-dir", data, "--token-file", tokFile, "--out", out)
		if code != 0 {
			t.Fatalf("cert request: %d %s%s", code, stdout, stderr)
		}
		b, err := os.ReadFile(filepath.Join(out, "root-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		roots, err := ca.ParseCerts(b)
		if err != nil {
			t.Fatal(err)
		}
		return len(roots)
	}
	if n := rootsIn(filepath.Join(dir, "before")); n != 1 {
		t.Fatalf("before the rotation root-cert.pem holds %d roots, want 1", n)
	}
	rotate(t, data, "publish")
	waitStatus(t, data, 20*time.Second, "the new root published", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "published" })
	if n := rootsIn(filepath.Join(dir, "during")); n != 2 {
		t.Fatalf("after publish root-cert.pem holds %d roots, want 2 (the signing root and the next)", n)
	}
}
