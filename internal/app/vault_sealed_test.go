package app_test

import (
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/internal/testkit"
)

// readyz returns /readyz's status code and body.
func readyz(t *testing.T, httpAddr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeVaultSealedReadyz (issue #28, 2): Vault sealed under a running
// warden serve until its intermediate expired. Then:
//   - /readyz fails (it answered 200 throughout), saying that the signing
//     certificate expired and that Vault is sealed;
//   - a workload connected before gets Unavailable naming the expiry;
//   - a new one (warden cert request) is told that the CA presents an
//     expired certificate and why, not a bare "tls: internal error";
//
// and once Vault is unsealed, warden renews within seconds, /readyz is
// 200 again and certificates are issued.
func TestServeVaultSealedReadyz(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	data := filepath.Join(t.TempDir(), "data")
	vaultRoot := filepath.Join(dir, "vault-root.pem")
	httpAddr := testkit.FreeAddr(t)
	addr, logs := serveVault(t, data, httpAddr, approleFlags(v, dir))
	tok := strings.TrimSpace(readFile(t, sleepTokenFile(t, t.TempDir(), data)))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, vaultRoot)))
	c, err := client.New(client.Config{Addr: addr, Roots: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sleep := "spiffe://cluster.local/ns/default/sa/sleep"
	if _, err := c.CreateCertificate(context.Background(), csrFor(t, sleep), 0, tok); err != nil {
		t.Fatalf("before the seal: %v", err)
	}
	if code, body := readyz(t, httpAddr); code != http.StatusOK {
		t.Fatalf("/readyz before the seal: %d %s", code, body)
	}

	v.Seal(t)
	// The 40 s intermediate expires within 40 s.
	deadline := time.Now().Add(60 * time.Second)
	code, body := readyz(t, httpAddr)
	for code == http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still 200 60 s after Vault was sealed:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
		code, body = readyz(t, httpAddr)
	}
	t.Logf("/readyz: %d %s", code, body)
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "ca: CA not ready: signing certificate expired at ") ||
		!strings.HasSuffix(body, "; renewing it fails: vault: sign intermediate: Vault at "+v.Addr+" is sealed (503 Vault is sealed): unseal it (vault operator unseal); warden tries again meanwhile\n") {
		t.Fatalf("/readyz while the CA cannot sign: %d %q", code, body)
	}

	_, err = c.CreateCertificate(context.Background(), csrFor(t, sleep), 0, tok)
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.HasPrefix(st.Message(), "ca: CA not ready: signing certificate expired at ") {
		t.Fatalf("a connected workload after the expiry: %v, want Unavailable naming the expiry", err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	request := []string{"cert", "request", "--ca", addr, "--root-cert", vaultRoot, "--token-file", tokFile, "--out", t.TempDir(), "--overwrite"}
	exit, _, stderr := run(t, request...)
	t.Logf("cert request: %s", stderr)
	if exit == 0 || strings.Contains(stderr, "internal error") ||
		!strings.Contains(stderr, "code = Unavailable desc = the CA at "+addr+" presents an expired certificate: a warden CA does so when its own signing certificate has expired (an intermediate from Vault not renewed in time), and it issues nothing until it has a new one; its /readyz and log say why: ") ||
		!strings.Contains(stderr, "x509: certificate has expired or is not yet valid") {
		t.Fatalf("cert request while the CA cannot sign: exit %d\n%s", exit, stderr)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="the CA cannot issue its own serving certificate: presenting the last one, which clients refuse once it has expired, until the CA can sign again"`) {
		t.Errorf("the serving certificate's failure is not logged:\n%s", logs.String())
	}

	v.Unseal(t)
	unsealed := time.Now()
	for code, body = readyz(t, httpAddr); code != http.StatusOK; code, body = readyz(t, httpAddr) {
		if time.Since(unsealed) > time.Minute {
			t.Fatalf("/readyz %d %s a minute after Vault was unsealed:\n%s", code, body, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(unsealed)
	t.Logf("ready %s after Vault was unsealed", took.Round(100*time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("ready %s after Vault was unsealed, want within 15 s", took)
	}
	after := certRequest(t, addr, data, vaultRoot, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "leaf after Vault was unsealed", after, vaultRoot)
	if _, err := c.CreateCertificate(context.Background(), csrFor(t, sleep), 0, tok); err != nil {
		t.Fatalf("the connected workload after the unseal: %v", err)
	}
}
