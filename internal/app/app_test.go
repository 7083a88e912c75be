package app_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// syncBuffer is the shared concurrent-safe buffer.
type syncBuffer = testkit.Buffer

// sleepTokenFile mints a token for default/sleep from the data directory
// and writes it to dir/token (0600), as an agent's token file.
func sleepTokenFile(t *testing.T, dir, data string) string {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep")
	if code != 0 {
		t.Fatalf("token: %d %s", code, stderr)
	}
	p := filepath.Join(dir, "token")
	if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// run runs a command to completion.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = app.Run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

// serve starts 'warden serve' in the background and waits until its CA
// port accepts connections. The returned stop function waits for exit.
func serve(t *testing.T, dataDir string, extra ...string) (addr string, stop func() int) {
	t.Helper()
	return serveAt(t, dataDir, testkit.FreeAddr(t), extra...)
}

// serveAt is serve on a given address (to restart a CA where it was).
func serveAt(t *testing.T, dataDir, addr string, extra ...string) (string, func() int) {
	t.Helper()
	stop, _ := serveLogged(t, dataDir, addr, extra...)
	return addr, stop
}

// serveLogged is serveAt that also returns what serve logs.
func serveLogged(t *testing.T, dataDir, addr string, extra ...string) (func() int, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{}
	done := make(chan int, 1)
	args := append([]string{"serve", "--data-dir", dataDir, "--listen", addr, "--http-listen", ""}, extra...)
	go func() { done <- app.Run(ctx, args, stderr, stderr) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := testkit.Serving(addr)
		if err == nil {
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("warden serve exited with %d:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("warden serve did not listen on %s:\n%s", addr, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var once sync.Once
	code := 0
	stop := func() int {
		once.Do(func() {
			cancel()
			if code = <-done; code != 0 {
				t.Logf("warden serve exited with %d:\n%s", code, stderr.String())
			}
		})
		return code
	}
	t.Cleanup(func() { stop() })
	return stop, stderr
}

func TestStandaloneFlowAndRestartKeepsRoot(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, stop := serve(t, data)

	tokFile := sleepTokenFile(t, dir, data)
	out := filepath.Join(dir, "out")
	code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--data-dir", data, "--token-file", tokFile, "--out", out)
	if code != 0 || !strings.HasPrefix(stdout, "spiffe://cluster.local/ns/default/sa/sleep\n") {
		t.Fatalf("cert request: %d\n%s%s", code, stdout, stderr)
	}
	if fi, err := os.Stat(filepath.Join(out, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v %v", fi.Mode(), err)
	}
	// A second request does not clobber the key without --renew/--overwrite.
	code, _, stderr = run(t, "cert", "request", "--ca", addr, "--data-dir", data, "--token-file", tokFile, "--out", out)
	if code != 1 || !strings.Contains(stderr, "key.pem already exists; pass --renew to rotate it or --overwrite to replace it") {
		t.Fatalf("second request: %d %s", code, stderr)
	}
	code, stdout, _ = run(t, "cert", "inspect", filepath.Join(out, "cert-chain.pem"))
	if code != 0 || !strings.Contains(stdout, "SPIFFE ID:   spiffe://cluster.local/ns/default/sa/sleep") || !strings.Contains(stdout, "Issuer:      CN=warden root CA 20") {
		t.Fatalf("cert inspect: %d\n%s", code, stdout)
	}
	_, info1, _ := run(t, "ca", "info", "--data-dir", data)
	if c := stop(); c != 0 {
		t.Fatalf("serve exited %d after cancel", c)
	}

	addr, _ = serve(t, data)
	code, info2, stderr := run(t, "ca", "info", "--data-dir", data)
	if code != 0 || info1 != info2 || !strings.Contains(info2, "SHA-256:") {
		t.Fatalf("root changed across restart (%d %s):\n%s\n---\n%s", code, stderr, info1, info2)
	}
	// Renewal over mTLS with the SVID from before the restart.
	code, stdout, stderr = run(t, "cert", "request", "--ca", addr, "--data-dir", data, "--renew", "--out", out)
	if code != 0 || !strings.HasPrefix(stdout, "spiffe://cluster.local/ns/default/sa/sleep\n") {
		t.Fatalf("renew after restart: %d\n%s%s", code, stdout, stderr)
	}
}

func TestTruncatedKeyStopsServe(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // serve makes it 0700
	_, stop := serve(t, dir)
	stop()
	keyPath := filepath.Join(dir, "ca-key.pem")
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	truncated := key[:len(key)/2]
	if err := os.WriteFile(keyPath, truncated, 0o600); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(dir)
	code, _, stderr := run(t, "serve", "--data-dir", dir, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(stderr, dir) || !strings.Contains(stderr, "ca-key.pem: no PEM private key found (file truncated or not PEM)") {
		t.Fatalf("stderr does not name the file: %s", stderr)
	}
	after, _ := os.ReadFile(keyPath)
	if !bytes.Equal(after, truncated) {
		t.Fatal("the truncated key file was modified")
	}
	if now, _ := os.ReadDir(dir); len(now) != len(before) {
		t.Fatalf("files in the data dir changed: %d -> %d", len(before), len(now))
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"frobnicate"}, 2, `warden: unknown command "frobnicate"`},
		{[]string{"token", "--ns", "default"}, 2, "warden token: usage: --namespace (or --ns) and --sa are required"},
		// A misspelt flag: one line naming it and the flag meant, no usage dump.
		{[]string{"token", "--namespce", "default"}, 2, "warden token: usage: flag provided but not defined: -namespce (did you mean --namespace?); run 'warden token -h' for its flags\n"},
		{[]string{"agent", "--tokn-file", "x"}, 2, "(did you mean --token-file?)"},
		{[]string{"token", "--ttl", "10"}, 2, `invalid value "10" for flag -ttl: parse error (a duration needs its unit: 90s, 10m, 24h)`},
		{[]string{"serve", "--trust-domain", "Bad Domain"}, 2, `warden serve: usage: --trust-domain "Bad Domain"`},
		{[]string{"serve", "--ca-key-type", "dsa"}, 2, `unknown key type "dsa"`},
		{[]string{"cert", "request", "--out", "x"}, 2, "give exactly one of --token-file or --renew"},
		{[]string{"cert", "inspect"}, 2, "want exactly one PEM file"},
		{[]string{"token", "--data-dir", "/nonexistent", "--ns", "a", "--sa", "b"}, 1, "no token key at /nonexistent/token-key.pem"},
		{[]string{"ca", "rotate", "--data-dir", "/nonexistent", "activatd"}, 2, `unknown rotation step "activatd"`},
		{[]string{"ca", "rotate", "--kubernetes", "--data-dir", "/nonexistent"}, 2, "want one of prepare, publish, activate, retire, abort, or --status"},
		{[]string{"ca", "rotate", "--data-dir", "/nonexistent", "publish"}, 1, "no warden serve answers on /nonexistent/admin.sock"},
	}
	for _, tc := range cases {
		code, _, stderr := run(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("warden %s: code %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), code, stderr, tc.code, tc.msg)
		}
		if n := strings.Count(stderr, "\n"); tc.code == 2 && tc.args[0] != "frobnicate" && n > 2 {
			t.Errorf("warden %s: %d lines on stderr; a mistake gets its message, not the usage", strings.Join(tc.args, " "), n)
		}
	}
	// -h prints the flags, exit 0; --version the version.
	if code, _, stderr := run(t, "token", "-h"); code != 0 || !strings.Contains(stderr, "-namespace") || !strings.Contains(stderr, "Usage: warden token") {
		t.Errorf("token -h: %d %q", code, stderr)
	}
	if code, out, _ := run(t, "--version"); code != 0 || out != "warden dev\n" {
		t.Errorf("--version: %d %q", code, out)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	if code, out, _ := run(t, "version"); code != 0 || out != "warden dev\n" {
		t.Fatalf("version: %d %q", code, out)
	}
}

func writePluggedIn(t *testing.T, dir string, f ca.Files) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	for name, b := range map[string][]byte{"ca-cert.pem": f.CACert, "ca-key.pem": f.CAKey, "cert-chain.pem": f.CertChain, "root-cert.pem": f.RootCert} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPluggedInCA(t *testing.T) {
	dir := t.TempDir()
	root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: "corp root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Organization: "cluster.local", CommonName: "mesh intermediate", TTL: 24 * time.Hour * 30, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := inter.Encode()
	plugged := filepath.Join(dir, "cacerts")
	writePluggedIn(t, plugged, f)
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data, "--plugged-in-dir", plugged)
	_, tok, _ := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep")
	os.WriteFile(filepath.Join(dir, "tok"), []byte(tok), 0o600)
	out := filepath.Join(dir, "out")
	code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--root-cert", filepath.Join(plugged, "root-cert.pem"), "--token-file", filepath.Join(dir, "tok"), "--out", out)
	if code != 0 {
		t.Fatalf("cert request: %d %s%s", code, stdout, stderr)
	}
	_, stdout, _ = run(t, "cert", "inspect", filepath.Join(out, "cert-chain.pem"))
	if !strings.Contains(stdout, "Certificate 2:") || !strings.Contains(stdout, "Subject:     CN=mesh intermediate,O=cluster.local") {
		t.Fatalf("chain does not carry the plugged-in intermediate:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(data, "ca-key.pem")); err == nil {
		t.Fatal("a self-signed root was created although a plugged-in CA was given")
	}

	// A key that does not match is refused with a precise message.
	other, _ := ca.NewSelfSigned(ca.CAOptions{})
	of, _ := other.Encode()
	f.CAKey = of.CAKey
	bad := filepath.Join(dir, "bad")
	writePluggedIn(t, bad, f)
	code, _, stderr = run(t, "serve", "--data-dir", data, "--plugged-in-dir", bad, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if code != 1 || !strings.Contains(stderr, "plugged-in CA in "+bad+": ca: ca-key.pem does not match the public key in ca-cert.pem") {
		t.Fatalf("bad plugged-in CA: %d %s", code, stderr)
	}
}

// TestLostFilesAreNotSilentlyReplaced: a data directory remembers its root
// and token key (store-identity.json). When the CA files, or the token
// key, are deleted, serve refuses to mint new ones and names the flag that
// allows it; with the flag it starts, and the marker follows.
func TestLostFilesAreNotSilentlyReplaced(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	_, stop := serve(t, data)
	stop()
	mk, err := os.ReadFile(filepath.Join(data, "store-identity.json"))
	if err != nil || !strings.Contains(string(mk), "rootSHA256") || !strings.Contains(string(mk), "tokenKeySHA256") {
		t.Fatalf("marker: %s %v", mk, err)
	}
	for _, n := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"} {
		os.Remove(filepath.Join(data, n))
	}
	code, _, stderr := run(t, "serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if code != 1 || !strings.Contains(stderr, "the CA files are gone, but this directory held the root with SHA-256") || !strings.Contains(stderr, "--allow-new-root") {
		t.Fatalf("lost CA files: %d %s", code, stderr)
	}
	if entries, _ := filepath.Glob(filepath.Join(data, "ca-*.pem")); len(entries) != 0 {
		t.Fatalf("a new root was written: %v", entries)
	}
	_, stop = serve(t, data, "--allow-new-root")
	stop()
	_, stop = serve(t, data) // the marker now names the new root
	stop()

	os.Remove(filepath.Join(data, "token-key.pem"))
	code, _, stderr = run(t, "serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if code != 1 || !strings.Contains(stderr, "token-key.pem is gone, but this directory held a token key") || !strings.Contains(stderr, "--allow-new-token-key") {
		t.Fatalf("lost token key: %d %s", code, stderr)
	}
	_, stop = serve(t, data, "--allow-new-token-key")
	stop()
}

// TestWrongPortNamed: a client pointed at the other port of serve is told
// which port is which: cert request --ca at the HTTP port, check
// --server at the CA port.
func TestWrongPortNamed(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	caAddr, httpAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	serveLogged(t, data, caAddr, "--http-listen", httpAddr)
	tokFile := filepath.Join(t.TempDir(), "tok")
	_, tok, _ := run(t, "token", "--data-dir", data, "--namespace", "default", "--sa", "sleep")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	code, _, stderr := run(t, "cert", "request", "--ca", httpAddr, "--data-dir", data, "--token-file", tokFile, "--out", t.TempDir())
	if want := "is it warden's HTTP port, serve's --http-listen"; code != 1 || !strings.Contains(stderr, want) {
		t.Errorf("cert request at the HTTP port: %d %q, want 1 and %q", code, stderr, want)
	}
	code, out, _ := run(t, "check", "--data-dir", data, "--server", caAddr)
	if want := "--server is serve's HTTP port, its --http-listen"; code != 1 || !strings.Contains(out, want) {
		t.Errorf("check --server at the CA port: %d %q, want 1 and %q", code, out, want)
	}
}
