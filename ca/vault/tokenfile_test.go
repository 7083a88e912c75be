package vault_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
)

// newToken has Vault create a token with the warden policy.
func newToken(t *testing.T, v *vaulttest.Server) string {
	t.Helper()
	s := v.API(t, "POST", "/v1/auth/token/create", map[string]any{"policies": []string{"warden"}, "ttl": "768h", "renewable": true})
	return s["auth"].(map[string]any)["client_token"].(string)
}

func writeToken(t *testing.T, path, tok string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTokenFileRotation (issue #28, 3): token auth from a file. The
// operator writes a new token there and revokes the old one: warden uses
// the new one within seconds, without a restart, and renews its
// intermediate with it (the file was read once, so the revoked token was
// used for ever). A token Vault refuses, written to the file, is reported
// and the current one kept; the next good one is taken.
func TestTokenFileRotation(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "token")
	file := filepath.Join(dir, "warden-token")
	old := readFile(t, dir, "warden-token")
	logs := &lockedBuffer{}
	cfg := config(v, vault.Token{File: file})
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	up := runUpstream(t, cfg)
	a := catest.Authority(t, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitLogins := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for up.Logins() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d logins, want %d:\n%s", up.Logins(), n, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Rotation: a new token, then the old one revoked.
	writeToken(t, file, newToken(t, v))
	waitLogins(2)
	v.API(t, "POST", "/v1/auth/token/revoke", map[string]any{"token": old})
	if err := r.Renew(context.Background()); err != nil {
		t.Fatalf("renewal after the token was rotated: %v\n%s", err, logs.String())
	}

	// A revoked token written to the file: refused, reported, the
	// current one kept.
	writeToken(t, file, old)
	deadline := time.Now().Add(10 * time.Second)
	const refused = `level=ERROR msg="Vault refused the new token; warden keeps using the current one" auth="token auth" error="vault: token auth: Vault refused the token (auth/token/lookup-self: 403 permission denied; invalid token); is it revoked or expired? Write a new one to `
	for !strings.Contains(logs.String(), refused+file+` (a running warden reads it again every second)"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal of the revoked token reported:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.Renew(context.Background()); err != nil {
		t.Fatalf("renewal with the current token after a bad one was written: %v", err)
	}
	// And a good one again.
	third := newToken(t, v)
	writeToken(t, file, third)
	waitLogins(4)
	if err := r.Renew(context.Background()); err != nil {
		t.Fatalf("renewal with the third token: %v", err)
	}
	if strings.Contains(logs.String(), third) || strings.Contains(logs.String(), old) {
		t.Fatalf("a token was logged:\n%s", logs.String())
	}
}

// TestSealedIsNotRefusedCredentials (issue #28, 3): a sealed Vault
// answers every request with 503 "Vault is sealed". A login then is not a
// refusal of warden's credentials: no "is the token revoked or expired?",
// no 5-minute lockout wait, but a message saying that Vault is sealed,
// for token auth and AppRole alike; and AppRole logs in again as soon
// as Vault is unsealed.
func TestSealedIsNotRefusedCredentials(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	v.RunDoc(t, dir, nil, "setup", "token")
	approle := vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")}
	// Tokens of 2 s, at most 4 s: warden logs in again every few seconds.
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_ttl": "2s", "token_max_ttl": "4s"})
	logs := &lockedBuffer{}
	cfg := config(v, approle)
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, time.Second
	up := runUpstream(t, cfg)
	v.Seal(t)
	sealed := "Vault at " + v.Addr + " is sealed (503 Vault is sealed): unseal it (vault operator unseal); warden tries again meanwhile"
	for _, tc := range []struct {
		name string
		auth vault.Auth
		want string
	}{
		{"token", vault.Token{File: filepath.Join(dir, "warden-token")}, "vault: token auth: " + sealed},
		{"approle", approle, "vault: approle auth at auth/approle: " + sealed},
	} {
		_, err := vault.New(context.Background(), config(v, tc.auth))
		if err == nil || err.Error() != tc.want || !errors.Is(err, vault.ErrUnavailable) || errors.Is(err, vault.ErrCredentials) {
			t.Errorf("%s: New against a sealed Vault:\n got %v\nwant %s", tc.name, err, tc.want)
		}
	}
	// The running client's token reaches its max TTL while Vault is
	// sealed: its logins fail, as Vault unavailable, and are retried.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), `msg="Vault login failed; retrying" auth="approle auth at auth/approle"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no failed login while Vault is sealed:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	logins := strings.Count(logs.String(), `msg="logged in to Vault"`)
	v.Unseal(t)
	unsealed := time.Now()
	for strings.Count(logs.String(), `msg="logged in to Vault"`) == logins {
		if time.Since(unsealed) > 20*time.Second {
			t.Fatalf("no login 20 s after Vault was unsealed:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("logged in %s after Vault was unsealed", time.Since(unsealed).Round(100*time.Millisecond))
	if got := logs.String(); strings.Contains(got, "revoked or expired") || strings.Contains(got, "Vault refused warden's credentials") ||
		!strings.Contains(got, sealed) {
		t.Fatalf("a sealed Vault taken for refused credentials, or not named:\n%s", got)
	}
	if _, err := up.SignIntermediate(context.Background(), csrRequest(t)); err != nil {
		t.Fatalf("signing after the unseal: %v", err)
	}
}

// TestNonRenewableLoginNoStorm: AppRole issuing batch tokens, which
// cannot be renewed (3 s here). warden logs in again at two thirds of
// their TTL, not at once and again: a handful of logins in 6 s.
func TestNonRenewableLoginNoStorm(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_type": "batch", "token_ttl": "3s", "token_max_ttl": "3s"})
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	up := runUpstream(t, cfg)
	time.Sleep(6 * time.Second)
	// Logins at 0, 2, 4 and 6 s.
	if n := up.Logins(); n < 3 || n > 5 {
		t.Fatalf("%d logins in 6 s with 3 s non-renewable tokens, want 3 to 5", n)
	}
	if _, err := up.SignIntermediate(context.Background(), csrRequest(t)); err != nil {
		t.Fatalf("signing with a batch token: %v", err)
	}
}
