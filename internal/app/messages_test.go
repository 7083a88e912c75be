package app_test

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
)

// rootFile writes a self-signed root to dir/root-cert.pem.
func rootFile(t *testing.T, dir string) string {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// emptyTokenHint is what an empty token file is told to hold.
func emptyTokenHint(file string) []string {
	return []string{"token file " + file + " is empty", "a projected service-account token with audience istio-ca", "warden token --namespace NS --sa SA"}
}

// TestEmptyTokenFileNamed: cert request and agent given an empty token
// file (as a projected token not written yet, or a failed 'warden token
// > file') say that it is empty and what belongs there, instead of
// sending no credentials.
func TestEmptyTokenFileNamed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	root := rootFile(t, dir)
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "cert", "request", "--ca", "127.0.0.1:1", "--root-cert", root, "--token-file", tok, "--out", filepath.Join(dir, "out"))
	for _, want := range emptyTokenHint(tok) {
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("cert request with an empty token file: exit %d %q; want 1 and %q", code, stderr, want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", "127.0.0.1:1", "--root-cert", root, "--token-file", tok,
			"--sds-socket", filepath.Join(dir, "sds.sock"), "--workload-api-socket", ""}, &logs, &logs)
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "retrying") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range emptyTokenHint(tok) {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("agent with an empty token file logs no %q:\n%s", want, logs.String())
		}
	}
}

// TestRootCertMissingNamed: agent and cert request without their trust
// anchors say the same thing: which file is missing, and where the
// bundle is in a cluster and in standalone mode (--data-dir, which both
// take).
func TestRootCertMissingNamed(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	t.Setenv("WARDEN_DATA_DIR", data)
	t.Setenv("WARDEN_ROOT_CERT", "")
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("x"), 0o600)
	want := "no trust anchors for warden's serving certificate: " + filepath.Join(data, "root-cert.pem") + " does not exist. Give --root-cert (or $WARDEN_ROOT_CERT): " +
		"the bundle warden publishes: on Kubernetes, the pod's mount of the istio-ca-root-cert ConfigMap at /var/run/secrets/istio/root-cert.pem"
	code, _, certErr := run(t, "cert", "request", "--ca", "127.0.0.1:1", "--token-file", tok, "--out", filepath.Join(dir, "out"))
	if code != 2 || !strings.Contains(certErr, want) || !strings.Contains(certErr, "in standalone mode, the data directory's root-cert.pem (--data-dir") {
		t.Errorf("cert request without its root file: exit %d %q; want 2 and %q", code, certErr, want)
	}
	code, _, agentErr := run(t, "agent", "--ca", "127.0.0.1:1", "--token-file", tok, "--sds-socket", filepath.Join(dir, "sds.sock"), "--workload-api-socket", "")
	if code != 2 || strings.TrimPrefix(agentErr, "warden agent: ") != strings.TrimPrefix(certErr, "warden cert request: ") {
		t.Errorf("agent without its root file: exit %d %q; want 2 and what cert request says, %q", code, agentErr, certErr)
	}
	// Named on the command line: the file is named as given.
	missing := filepath.Join(dir, "missing.pem")
	for _, cmd := range [][]string{{"cert", "request", "--out", filepath.Join(dir, "out")}, {"agent", "--sds-socket", filepath.Join(dir, "sds.sock"), "--workload-api-socket", ""}} {
		code, _, stderr := run(t, append(cmd, "--ca", "127.0.0.1:1", "--token-file", tok, "--root-cert", missing)...)
		if want := "--root-cert " + missing + " does not exist. Give the bundle warden publishes: on Kubernetes"; code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("%s --root-cert %s: exit %d %q; want 2 and %q", cmd[0], missing, code, stderr, want)
		}
	}
}
