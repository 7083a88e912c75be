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

// TestRenewalBeforeExpiryAfterOutage: a short-lived intermediate from a
// real Vault, and Vault down from before the first renewal. The renewer's
// backoff (4 s doubling) outgrows the intermediate's remaining life, which
// it says at ERROR; Vault comes back only then, when the next regular
// retry would be after the intermediate's expiry, and the renewer, which
// retries every quarter of the remaining life instead, replaces the
// intermediate before it expires.
func TestRenewalBeforeExpiryAfterOutage(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log, cfg.RetryMin, cfg.RetryMax = log, 100*time.Millisecond, time.Second
	up := runUpstream(t, cfg)
	a := catest.Authority(t, nil)
	// 60 s, which Vault backdates by 30 s: renewal 15 s after issue.
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, TTL: time.Minute, MinLife: 30 * time.Second, Log: log,
		RetryMin: 4 * time.Second, RetryMax: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := a.Material()
	expiry := first.NotAfter()
	if life := time.Until(expiry); life < 50*time.Second || life > time.Minute {
		t.Fatalf("the intermediate lives %s more, want the requested minute", life)
	}
	v.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	// The failures: first as warnings, then, once the backoff is longer
	// than the life left, the alarm. Only then does Vault come back.
	const alarm = "INTERMEDIATE CA EXPIRES BEFORE THE NEXT REGULAR RETRY: retrying every quarter of its remaining life instead; fix the upstream now"
	for !strings.Contains(logs.String(), alarm) {
		if time.Now().After(expiry) {
			t.Fatalf("no alarm before the intermediate expired:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a.Material() != first {
		t.Fatal("the intermediate changed while Vault was down")
	}
	warned := strings.Count(logs.String(), `level=WARN msg="intermediate CA renewal failed; signing continues with the current one"`)
	if warned < 2 || !strings.Contains(logs.String(), `error="vault: sign intermediate: cannot reach Vault at `+v.Addr+`: connection refused; is Vault running at that address (--vault-addr)?"`) {
		t.Fatalf("want at least two failed renewals logged at WARN before the alarm, each saying Vault cannot be reached:\n%s", logs.String())
	}
	t.Logf("alarm %s before expiry, after %d warnings", time.Until(expiry).Round(time.Second), warned)
	v.Restart()

	for a.Material() == first {
		if time.Now().After(expiry.Add(5 * time.Second)) {
			t.Fatalf("no renewal after Vault came back:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	renewedAt := time.Now()
	if !renewedAt.Before(expiry) {
		t.Fatalf("the intermediate was renewed %s after it expired:\n%s", renewedAt.Sub(expiry), logs.String())
	}
	second := a.Material()
	if second.Cert.Equal(first.Cert) || !second.Roots[0].Equal(first.Roots[0]) || !second.NotAfter().After(expiry) {
		t.Fatal("the renewal did not bring a later intermediate under Vault's root")
	}
	t.Logf("renewed %s before the old intermediate's expiry", expiry.Sub(renewedAt).Round(time.Millisecond))
}
