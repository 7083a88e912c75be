package vault_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
)

// benchUpstream is a real Vault set up by docs/vault.md (AppRole).
func benchUpstream(b *testing.B) *vault.Upstream {
	b.Helper()
	v := vaulttest.Start(b)
	dir := b.TempDir()
	v.RunDoc(b, dir, nil, "setup", "pki", "policy", "approle")
	role := readFileB(b, filepath.Join(dir, "warden-role-id"))
	up, err := vault.New(context.Background(), vault.Config{Address: v.Addr, CACert: v.CACert,
		Auth: vault.AppRole{RoleID: role, SecretIDFile: filepath.Join(dir, "warden-secret-id")}})
	if err != nil {
		b.Fatal(err)
	}
	return up
}

// BenchmarkRenewFromVault is the cost of one intermediate (key, CSR,
// Vault's signature over HTTPS, the root fetch, validation and proof):
// paid once per intermediate lifetime, never per workload.
func BenchmarkRenewFromVault(b *testing.B) {
	up := benchUpstream(b)
	a := catest.Authority(b, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := r.Renew(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignUnderVaultIntermediate is the hot path with the Vault
// upstream, on all cores; compare with ca's BenchmarkSign/ecdsa-p256.
func BenchmarkSignUnderVaultIntermediate(b *testing.B) {
	up := benchUpstream(b)
	a := catest.Authority(b, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		b.Fatal(err)
	}
	csrs := make([][]byte, 32)
	for i := range csrs {
		csrs[i] = catest.CSR(b, catest.Key(b, ca.ECDSAP256), nil)
	}
	id := catest.ID("bench", "worker")
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := a.Sign(ca.SignRequest{CSR: csrs[i%len(csrs)], ID: id}); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

func readFileB(b *testing.B, path string) string {
	b.Helper()
	data, err := readFileErr(path)
	if err != nil {
		b.Fatal(err)
	}
	return data
}
