package app_test

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// vaultIssued is how many certificates Vault's PKI mount has stored,
// its root left out.
func vaultIssued(t *testing.T, v *vaulttest.Server) int {
	t.Helper()
	data, _ := v.API(t, "GET", "/v1/pki/certs?list=true", nil)["data"].(map[string]any)
	keys, _ := data["keys"].([]any)
	return len(keys) - 1
}

// TestServeVaultShortMount (issue #28, 1): warden serve with its default
// flags against a PKI mount whose max_lease_ttl is below what warden
// asks for (168h).
//   - At 20 s, below the 10-minute floor: warden serve used to start and
//     ask Vault for thousands of intermediates; now it refuses to start,
//     naming the mount's setting and the command that raises it, after one.
//   - At 1h, above the floor: it starts, and warns at startup that Vault
//     cut the intermediate and that workload certificates are cut below
//     --default-ttl with it.
func TestServeVaultShortMount(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	v.API(t, "POST", "/v1/sys/mounts/pki/tune", map[string]any{"max_lease_ttl": "20s"})
	args := append([]string{"serve", "--data-dir", filepath.Join(t.TempDir(), "data"), "--listen", testkit.FreeAddr(t), "--http-listen", ""}, approleFlags(v, dir)...)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var stdout, stderr syncBuffer
	code := app.Run(ctx, args, &stdout, &stderr)
	want := regexp.MustCompile(`warden serve: ca: intermediate refused: the upstream issued one valid for (19|20)s, less than the floor of 10m0s: ` +
		`Vault caps it at the max_lease_ttl of PKI mount pki: raise that to at least the 168h warden asks for \(vault secrets tune -max-lease-ttl=168h pki\), ` +
		`or ask for less with --vault-intermediate-ttl\n$`)
	n := vaultIssued(t, v)
	t.Logf("a 20 s mount: exit %d, %d intermediates issued", code, n)
	if code != 1 || !want.MatchString(stderr.String()) || n != 1 {
		t.Fatalf("exit %d, %d intermediates issued (want exit 1 after one), stderr:\n%s\nwant it to end with:\n%s", code, n, stderr.String(), want)
	}

	v.API(t, "POST", "/v1/sys/mounts/pki/tune", map[string]any{"max_lease_ttl": "1h"})
	_, logs := serveVault2(t, approleFlags(v, dir))
	// Vault's NotAfter is in whole seconds.
	warning := regexp.MustCompile(`level=WARN msg="the upstream issued the intermediate for (59m59s|1h0m0s), not the 168h0m0s asked for; ` +
		`workload certificates are cut to its remaining life, down to 30m1[45]s, where the default workload TTL is 24h0m0s: ` +
		`Vault caps it at the max_lease_ttl of PKI mount pki: raise that to at least the 168h warden asks for \(vault secrets tune -max-lease-ttl=168h pki\), ` +
		`or ask for less with --vault-intermediate-ttl"`)
	at := warning.FindStringIndex(logs.String())
	if at == nil {
		t.Fatalf("no startup warning:\n%s\nwant:\n%s", logs.String(), warning)
	}
	if at[0] > strings.Index(logs.String(), "serving CA API") {
		t.Fatal("the warning came after the CA started serving")
	}
}

// serveVault2 runs warden serve with the Vault upstream and its default
// intermediate settings until the test ends.
func serveVault2(t *testing.T, vaultArgs []string) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	addr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args := append([]string{"serve", "--data-dir", filepath.Join(t.TempDir(), "data"), "--listen", addr, "--http-listen", ""}, vaultArgs...)
	go func() { done <- app.Run(ctx, args, logs, logs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("warden serve exited %d:\n%s", code, logs.String())
		}
	})
	waitFor(t, logs, "serving CA API", 1)
	return addr, logs
}
