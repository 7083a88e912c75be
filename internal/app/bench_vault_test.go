package app_test

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/wardenmesh/warden/internal/bench"
)

var throughputLine = regexp.MustCompile(`(?m)^throughput: (\d+) certs/s$`)

// TestBenchCAVaultUpstreamMatchesSelfSigned runs 'warden bench ca'
// against two warden serves, one with its own root and one with an
// intermediate from a real Vault, alternating runs so that the machine's
// drift hits both alike. Vault is off the hot path, so the medians must
// agree within 10%; and with Vault killed the load goes on without an
// error.
func TestBenchCAVaultUpstreamMatchesSelfSigned(t *testing.T) {
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
		return r
	}
	const runs = 7
	var self, withVault []float64
	for range runs {
		self = append(self, benchOnce(selfAddr, selfData, filepath.Join(selfData, "root-cert.pem")))
		withVault = append(withVault, benchOnce(vaultAddr, vaultData, filepath.Join(dir, "vault-root.pem")))
	}
	ms, mv := bench.Median(self), bench.Median(withVault)
	t.Logf("median of %d runs: self-signed %.0f certs/s (%s), Vault upstream %.0f certs/s (%s), ratio %.3f",
		runs, ms, bench.FormatRates(self), mv, bench.FormatRates(withVault), mv/ms)
	if mv < 0.9*ms || mv > 1.1*ms {
		t.Errorf("Vault upstream %.0f certs/s vs self-signed %.0f: not within 10%%", mv, ms)
	}
	v.Stop()
	benchOnce(vaultAddr, vaultData, filepath.Join(dir, "vault-root.pem")) // fails on any error
}
