package vault_test

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/ca/vault"
)

// TestRootPolicyWarning: logged in with Vault's root token (an
// administrator's VAULT_TOKEN left in the shell after the docs' setup),
// warden says so at WARN level, after the login line that names the
// policy; with the docs' token, limited to the warden policy, it does not.
func TestRootPolicyWarning(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "token")
	const warning = `level=WARN msg="warden is logged in to Vault with the root policy: give it a token or role limited to the PKI paths it signs with (docs/vault.md, Policy)" auth="token auth"`
	// The log without its time stamps.
	lines := func(logs *lockedBuffer) string {
		return regexp.MustCompile(`(?m)^time=\S+ `).ReplaceAllString(logs.String(), "")
	}
	login := func(t *testing.T, token string) string {
		t.Helper()
		logs := &lockedBuffer{}
		cfg := config(v, vault.Token{Token: token})
		cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
		if _, err := vault.New(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		return lines(logs)
	}

	got := login(t, v.RootToken)
	want := `level=INFO msg="logged in to Vault" addr=` + v.Addr + ` auth="token auth" policies=root ttl=0s renewable=false` + "\n" + warning + "\n"
	if got != want {
		t.Errorf("root token: log\n%s\nwant\n%s", got, want)
	}

	got = login(t, readFile(t, dir, "warden-token"))
	if strings.Contains(got, "root policy") || !strings.Contains(got, `msg="logged in to Vault" addr=`+v.Addr+` auth="token auth" policies=default,warden `) {
		t.Errorf("warden's token: log\n%s\nwant the login with policies=default,warden and no warning", got)
	}
}
