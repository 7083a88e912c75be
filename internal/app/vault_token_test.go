package app_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestServeVaultTokenFileRotation (issue #28, 3): warden serve with
// --vault-token-file. The operator writes a new token to the file and
// revokes the old one: warden renews its intermediate with the new one
// and keeps issuing certificates, with no restart (the file was read
// once, so every renewal after the revocation failed). And a warden
// started against a sealed Vault says so, not that the token may be
// revoked or expired.
func TestServeVaultTokenFileRotation(t *testing.T) {
	v, dir := vaultSetup(t, "token")
	file := filepath.Join(dir, "warden-token")
	old := strings.TrimSpace(readFile(t, file))
	data := filepath.Join(t.TempDir(), "data")
	vaultRoot := filepath.Join(dir, "vault-root.pem")
	flags := []string{"--ca-upstream", "vault", "--vault-addr", v.Addr, "--vault-cacert", v.CACert, "--vault-auth", "token", "--vault-token-file", file}
	addr, logs := serveVault(t, data, "", flags)

	s := v.API(t, "POST", "/v1/auth/token/create", map[string]any{"policies": []string{"warden"}, "ttl": "768h", "renewable": true})
	if err := os.WriteFile(file, []byte(s["auth"].(map[string]any)["client_token"].(string)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the file is read every second
	v.API(t, "POST", "/v1/auth/token/revoke", map[string]any{"token": old})
	revoked := len(logs.String())
	// Renewals come every 5 s (a 40 s intermediate, backdated 30 s).
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String()[revoked:], `msg="intermediate CA activated"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal in 30 s after the old token was revoked:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if failed := logs.String()[revoked:]; strings.Contains(failed, "renewal failed") {
		t.Fatalf("renewals failed after the rotation:\n%s", failed)
	}
	after := certRequest(t, addr, data, vaultRoot, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "leaf after the token was rotated", after, vaultRoot)

	// Started against a sealed Vault.
	v.Seal(t)
	args := append([]string{"serve", "--data-dir", filepath.Join(t.TempDir(), "data"), "--listen", testkit.FreeAddr(t), "--http-listen", ""}, flags...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr syncBuffer
	code := app.Run(ctx, args, &stdout, &stderr)
	want := "warden serve: vault: token auth: Vault at " + v.Addr + " is sealed (503 Vault is sealed): unseal it (vault operator unseal); warden tries again meanwhile\n"
	if code != 1 || !strings.HasSuffix(stderr.String(), want) {
		t.Fatalf("warden serve against a sealed Vault: exit %d\n%s\nwant the suffix:\n%s", code, stderr.String(), want)
	}
}
