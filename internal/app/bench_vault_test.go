package app_test

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

var throughputLine = regexp.MustCompile(`(?m)^throughput: (\d+) certs/s$`)

// TestBenchCAVaultUpstream runs 'warden bench ca' against two warden
// serves, one with its own root and one with an intermediate from a real
// Vault, and then again with Vault killed: the load must go on without an
// error, which is what "Vault is off the hot path" means. The figures are
// logged, never asserted (shared machines are noisy); hack/bench-ca.sh
// with UPSTREAMS="self-signed vault" prints the medians compared in the
// issue.
func TestBenchCAVaultUpstream(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	selfData := filepath.Join(t.TempDir(), "self")
	selfAddr, _ := serve(t, selfData)
	vaultData := filepath.Join(t.TempDir(), "vault")
	vaultAddr, _ := serve(t, vaultData, approleFlags(v, dir)...)
	benchOnce := func(addr, data, root string) float64 {
		t.Helper()
		code, stdout, stderr := run(t, "bench", "ca", "--addr", addr, "--data-dir", data, "--root-cert", root,
			"--duration", "1s", "--warmup", "300ms", "--concurrency", "8", "--runs", "1")
		m := throughputLine.FindStringSubmatch(stdout)
		if code != 0 || m == nil {
			t.Fatalf("bench ca: %d\n%s%s", code, stdout, stderr)
		}
		r, _ := strconv.ParseFloat(m[1], 64)
		if r <= 0 {
			t.Fatalf("bench ca issued nothing:\n%s", stdout)
		}
		return r
	}
	self := benchOnce(selfAddr, selfData, filepath.Join(selfData, "root-cert.pem"))
	withVault := benchOnce(vaultAddr, vaultData, filepath.Join(dir, "vault-root.pem"))
	v.Stop()
	vaultDown := benchOnce(vaultAddr, vaultData, filepath.Join(dir, "vault-root.pem"))
	t.Logf("self-signed %.0f certs/s, Vault upstream %.0f certs/s, Vault killed %.0f certs/s (one run each; not asserted)",
		self, withVault, vaultDown)
}
