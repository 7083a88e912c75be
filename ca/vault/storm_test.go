package vault_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
)

// issuedCerts is how many certificates Vault's PKI mount has issued and
// stored (pki/certs), its own root left out.
func issuedCerts(t *testing.T, v *vaulttest.Server) int {
	t.Helper()
	data, _ := v.API(t, "GET", "/v1/pki/certs?list=true", nil)["data"].(map[string]any)
	keys, _ := data["keys"].([]any)
	return len(keys) - 1
}

// shortMount sets up docs/vault.md with AppRole, then tunes the PKI
// mount's max_lease_ttl down to 20 s: Vault cuts every intermediate to
// 20 s and backdates it by 30 s, so that half its life is past when it
// arrives.
func shortMount(t *testing.T, logs *lockedBuffer) (*vaulttest.Server, *vault.Upstream) {
	t.Helper()
	v, dir := setup(t, "approle")
	v.API(t, "POST", "/v1/sys/mounts/pki/tune", map[string]any{"max_lease_ttl": "20s"})
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	return v, runUpstream(t, cfg)
}

// TestShortMountMaxNoStorm (issue #28, 1): with the PKI mount's
// max_lease_ttl at 20 s, warden used to renew in a tight loop (3,578
// intermediates in 25 s). Now the first one, shorter than the floor, is
// refused at Init (warden serve does not start) with the mount setting
// named, and Vault has issued that one alone in 25 s.
func TestShortMountMaxNoStorm(t *testing.T) {
	t.Parallel()
	logs := &lockedBuffer{}
	v, up := shortMount(t, logs)
	a := catest.Authority(t, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	initErr := r.Init(ctx)
	if initErr == nil {
		_ = r.Run(ctx)
	}
	<-ctx.Done()
	n := issuedCerts(t, v)
	t.Logf("Vault issued %d intermediates in 25 s", n)
	if n > 1 {
		t.Fatalf("Vault issued %d intermediates in 25 s, want at most 1", n)
	}
	want := regexp.MustCompile(`^ca: intermediate refused: the upstream issued one valid for (19|20)s, less than the floor of 10m0s: ` +
		`Vault caps it at the max_lease_ttl of PKI mount pki: raise that to at least the 168h warden asks for ` +
		`\(vault secrets tune -max-lease-ttl=168h pki\), or ask for less with --vault-intermediate-ttl$`)
	if !errors.Is(initErr, ca.ErrShortIntermediate) || !want.MatchString(initErr.Error()) {
		t.Fatalf("Init:\n got %v\nwant %s", initErr, want)
	}
	if a.Material() != nil {
		t.Fatal("the short intermediate was activated")
	}
}

// TestShortMountMaxMinInterval: with the floor lowered below the mount's
// 20 s, warden uses such intermediates, whose renewal time (backdated
// NotBefore plus half the life) is past on arrival; the minimum interval
// (5 s here) still bounds how often Vault is asked: at most 6 in 25 s,
// and the CA signs throughout.
func TestShortMountMaxMinInterval(t *testing.T) {
	t.Parallel()
	logs := &lockedBuffer{}
	v, up := shortMount(t, logs)
	a := catest.Authority(t, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, Log: slog.New(slog.NewTextHandler(logs, nil)),
		TTL: time.Hour, MinLife: 10 * time.Second, MinInterval: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Vault's NotAfter is in whole seconds: 19 or 20 s left.
	warning := regexp.MustCompile(`level=WARN msg="the upstream issued the intermediate for (19|20)s, not the 1h0m0s asked for; ` +
		`workload certificates are cut to its remaining life, down to (19|20)s, where the default workload TTL is 24h0m0s: ` +
		`Vault caps it at the max_lease_ttl of PKI mount pki: raise that to at least the 1h warden asks for \(vault secrets tune -max-lease-ttl=1h pki\), ` +
		`or ask for less with --vault-intermediate-ttl"`)
	if !warning.MatchString(logs.String()) {
		t.Errorf("no warning naming the mount's max_lease_ttl:\n%s", logs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for ctx.Err() == nil {
		id := catest.ID("default", "sleep")
		if _, err := a.Sign(ca.SignRequest{CSR: catest.CSRFor(t, catest.Key(t, ca.ECDSAP256), id), ID: id}); err != nil {
			t.Fatalf("signing while the renewer runs: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := issuedCerts(t, v)
	t.Logf("Vault issued %d intermediates in 25 s with a 5 s minimum interval", n)
	if n < 2 || n > 6 {
		t.Fatalf("Vault issued %d intermediates in 25 s, want 2 to 6 (Init, then one per 5 s at most)", n)
	}
}
