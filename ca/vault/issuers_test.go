package vault_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/wardenmesh/warden/ca/vault"
)

// TestIssuers: with only the policy of docs/vault.md (the issuers are
// public in Vault), warden lists the PKI mount's issuers and their roots,
// and marks the one it signs with: the default issuer, which moves with
// docs/vault.md's rotation steps, or the one its sign path names.
func TestIssuers(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "token")
	root := func(name string) *x509.Certificate { return rootCert(t, dir, name) }
	oldRoot := root("vault-root.pem")
	up, err := vault.New(context.Background(), config(v, vault.Token{File: filepath.Join(dir, "warden-token")}))
	if err != nil {
		t.Fatal(err)
	}
	// signer returns the root of the issuer marked as signing, and how
	// many issuers there are.
	signer := func(up *vault.Upstream) (*x509.Certificate, int) {
		t.Helper()
		iss, err := up.Issuers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var signs *x509.Certificate
		for _, is := range iss {
			if is.Signs {
				if signs != nil {
					t.Fatalf("two issuers marked as signing: %+v", iss)
				}
				signs = is.Root
			}
		}
		return signs, len(iss)
	}
	if s, n := signer(up); n != 1 || !s.Equal(oldRoot) {
		t.Fatalf("before the rotation: %d issuers, the signing one %v; want Vault's root alone", n, s)
	}
	v.RunDoc(t, dir, nil, "setup", "rotate")
	newRoot := root("vault-root-next.pem")
	if s, n := signer(up); n != 2 || !s.Equal(oldRoot) {
		t.Fatalf("after rotate/internal: %d issuers, the signing one %v; want 2, the old root signing", n, s)
	}
	// A sign path naming the new issuer signs with it.
	cfg := config(v, vault.Token{File: filepath.Join(dir, "warden-token")})
	cfg.SignPath = "pki/issuer/" + readFile(t, dir, "next-issuer-id") + "/sign-intermediate"
	named, err := vault.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := signer(named); !s.Equal(newRoot) {
		t.Fatalf("with --vault-sign-path %s the signing issuer's root is %v, want the new root", cfg.SignPath, s)
	}
	v.RunDoc(t, dir, nil, "setup", "replace")
	if s, n := signer(up); n != 2 || !s.Equal(newRoot) {
		t.Fatalf("after root/replace: %d issuers, the signing one %v; want the new root", n, s)
	}
}
