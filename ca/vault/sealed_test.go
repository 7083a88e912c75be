package vault_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
)

// TestSealedVaultRecovery (issue #28, 2): Vault sealed from before the
// first renewal until after the intermediate expired. The renewer's
// failures say that Vault is sealed, and once it is unsealed the
// intermediate is replaced within seconds: after expiry the backoff is
// capped at 5 s (it had grown to 5 minutes, so warden waited minutes
// after Vault came back).
func TestSealedVaultRecovery(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log = log
	up := runUpstream(t, cfg)
	a := catest.Authority(t, nil)
	// The default backoff (1 s doubling); a 30 s intermediate, which
	// Vault backdates by 30 s: renewal due at once.
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, TTL: 30 * time.Second, MinLife: 10 * time.Second, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := a.Material()
	v.Seal(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Sealed until 20 s after the expiry.
	time.Sleep(time.Until(first.NotAfter().Add(20 * time.Second)))
	if a.Material() != first {
		t.Fatal("the intermediate changed while Vault was sealed")
	}
	if err := a.Ready(); err == nil {
		t.Fatal("the authority says it can sign with an expired intermediate")
	}
	sealed := `error="vault: sign intermediate: Vault at ` + v.Addr + ` is sealed (503 Vault is sealed): unseal it (vault operator unseal); warden tries again meanwhile"`
	if !strings.Contains(logs.String(), `level=ERROR msg="INTERMEDIATE CA EXPIRED: the upstream still fails; no workload certificates can be issued" `+sealed) {
		t.Fatalf("the failures after expiry do not say that Vault is sealed:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "revoked or expired") {
		t.Fatalf("a sealed Vault reported as refused credentials:\n%s", logs.String())
	}
	v.Unseal(t)
	unsealed := time.Now()
	for a.Material() == first {
		if time.Since(unsealed) > time.Minute {
			t.Fatalf("no renewal a minute after Vault was unsealed:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(unsealed)
	t.Logf("renewed %s after Vault was unsealed", took.Round(100*time.Millisecond))
	if took > 10*time.Second {
		t.Fatalf("renewed %s after Vault was unsealed, want within 10 s (retries every 5 s at most once expired):\n%s", took, logs.String())
	}
	if err := a.Ready(); err != nil {
		t.Fatalf("not ready after the renewal: %v", err)
	}
}
