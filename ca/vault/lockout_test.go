package vault_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
)

// TestExpiringSecretIDNoLockout: an AppRole whose secret IDs expire by
// time (secret_id_ttl), where TestExpiredSecretIDNoLockout's run out by
// use. Once the secret ID expired and warden's token reached its max TTL,
// Vault refuses the login, and:
//   - the intermediate's renewal fails saying that the secret ID may have
//     expired and which file to write a new one to, without a login;
//   - warden sends the refused secret ID once more after the wait, and no
//     more (login requests counted at Vault's door, a proxy in front of it,
//     and by warden), so Vault locks nobody out (sys/locked-users), while
//     five refused logins from a client that retries do lock a role out;
//   - once a valid secret ID is written, warden logs in and renews.
func TestExpiringSecretIDNoLockout(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_policies": []string{"warden"},
		// The token's renewals come at about 2/3 of its 6 s: 2 s of slack
		// for a loaded machine before it would expire and log in again.
		"token_ttl": "6s", "token_max_ttl": "12s", "secret_id_ttl": "2s"})
	secretFile := filepath.Join(dir, "warden-secret-id")
	writeSecretID := func() string {
		t.Helper()
		s := v.API(t, "POST", "/v1/auth/approle/role/warden/secret-id", nil)["data"].(map[string]any)["secret_id"].(string)
		if err := os.WriteFile(secretFile, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return s
	}
	secret := writeSecretID()
	created := time.Now()

	p := newRecordingProxy(t, v)
	logs := &lockedBuffer{}
	cfg := vault.Config{Address: p.URL, Auth: vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: secretFile},
		Log: slog.New(slog.NewTextHandler(logs, nil)), CredentialRetry: 8 * time.Second}
	up := runUpstream(t, cfg)
	loggedIn := time.Now()
	a := catest.Authority(t, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := a.Material()

	// logins checks the login attempts so far, as Vault received them
	// and as warden counts them.
	logins := func(want int) {
		t.Helper()
		got := 0
		for _, req := range p.requests() {
			if strings.HasPrefix(req, "PUT /v1/auth/approle/login ") {
				got++
			}
		}
		if got != want || up.Logins() != uint64(want) {
			t.Fatalf("%d login requests reached Vault and warden counts %d, want %d:\n%s", got, up.Logins(), want, logs.String())
		}
	}
	waitLog := func(want string, n int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for strings.Count(logs.String(), want) < n {
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %d× %q:\n%s", n, want, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	logins(1)

	// The secret ID expires 2 s after it was made. Vault deletes expired
	// secret IDs in a tidy it runs once a minute (until then they still
	// log in); the test runs it at once, before the token's max TTL.
	time.Sleep(time.Until(created.Add(2500 * time.Millisecond)))
	v.API(t, "POST", "/v1/auth/approle/tidy/secret-id", nil)
	deadline := time.Now().Add(10 * time.Second)
	for v.API(t, "POST", "/v1/auth/approle/role/warden/secret-id/lookup", map[string]any{"secret_id": secret}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Vault's tidy did not delete the expired secret ID")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if time.Since(loggedIn) > 10*time.Second {
		t.Fatalf("the tidy ended %s after the login, too close to the token's max TTL (12 s) for the test", time.Since(loggedIn))
	}

	// At the max TTL warden logs in again, and Vault refuses.
	waitLog("Vault refused warden's credentials", 1, 20*time.Second)
	refused := time.Now()
	logins(2)
	// Once the token has expired, the renewal fails with the refused
	// login's reason, and without sending the secret ID again. (Vault
	// caps a renewal at the max TTL using times truncated to the second,
	// so a token may outlive its max TTL by up to a second.)
	time.Sleep(time.Until(loggedIn.Add(13*time.Second + 500*time.Millisecond)))
	err = r.Renew(context.Background())
	want := "vault: sign intermediate at pki/root/sign-intermediate: 403 permission denied; invalid token; logging in again failed: " +
		"not logging in again with the credentials Vault refused (to stay clear of its lockout; new ones are used as soon as they are written): " +
		"vault: approle auth at auth/approle: login refused (auth/approle/login: 400 invalid role or secret ID): " +
		"the role ID or the secret ID is wrong, or the secret ID expired or was used up (secret_id_ttl, secret_id_num_uses): " +
		"write a new secret ID to " + secretFile + " (read again at each login)"
	if err == nil || err.Error() != want {
		t.Fatalf("renewal with an expired secret ID:\n got %v\nwant %s", err, want)
	}
	if a.Material() != first {
		t.Fatal("a failed renewal replaced the intermediate")
	}
	logins(2)

	// After the wait (8 s here, 5 minutes by default) the same secret ID
	// is sent once more, then the wait starts again.
	waitLog("Vault refused warden's credentials", 2, 15*time.Second)
	if d := time.Since(refused); d < 7*time.Second {
		t.Fatalf("the refused secret ID was sent again %s after the refusal, want the 8 s wait", d)
	}
	time.Sleep(2 * time.Second)
	logins(3)
	lockedUsers := func() float64 {
		t.Helper()
		data, _ := v.API(t, "GET", "/v1/sys/locked-users", nil)["data"].(map[string]any)
		total, ok := data["total"].(float64)
		if !ok {
			b, _ := json.Marshal(data)
			t.Fatalf("sys/locked-users: %s", b)
		}
		return total
	}
	if n := lockedUsers(); n != 0 {
		t.Fatalf("Vault locked out %g users", n)
	}

	// A valid secret ID: warden logs in within a second or two, and the
	// renewal goes through.
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_ttl": "1h", "token_max_ttl": "24h", "secret_id_ttl": "24h"})
	writeSecretID()
	waitLog(`msg="logged in to Vault"`, 2, 5*time.Second)
	logins(4)
	if err := r.Renew(context.Background()); err != nil {
		t.Fatalf("renewal after a new secret ID: %v", err)
	}
	if second := a.Material(); second == first || second.Cert.Equal(first.Cert) || !second.Roots[0].Equal(first.Roots[0]) {
		t.Fatal("no new intermediate under Vault's root after the new secret ID")
	}
	if n := lockedUsers(); n != 0 {
		t.Fatalf("Vault locked out %g users", n)
	}

	// The check above can fail: a client that sends a refused secret ID
	// five times (Vault's default threshold) locks its role out.
	v.API(t, "POST", "/v1/auth/approle/role/hammer", map[string]any{"token_policies": []string{"warden"}})
	roleID := v.API(t, "GET", "/v1/auth/approle/role/hammer/role-id", nil)["data"].(map[string]any)["role_id"].(string)
	badSecret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(badSecret, []byte("00000000-0000-0000-0000-000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := vault.New(context.Background(), config(v, vault.AppRole{RoleID: roleID, SecretIDFile: badSecret})); err == nil {
			t.Fatal("a wrong secret ID logged in")
		}
	}
	if n := lockedUsers(); n != 1 {
		t.Fatalf("after five refused logins Vault has %g locked users, want 1", n)
	}
}
