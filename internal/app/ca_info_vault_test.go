package app_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// TestCAInfoVaultDataDir: warden ca info on the data directory of a
// running warden serve --ca-upstream vault (a real Vault set up by
// docs/vault.md) says that it holds a Vault-backed CA's trust bundle and
// where the intermediate is, and describes Vault's root; not "partial CA
// store", which is what loading it as a CA of warden's own says.
func TestCAInfoVaultDataDir(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	data := filepath.Join(t.TempDir(), "data")
	serveVault(t, data, "", approleFlags(v, dir))
	b, err := os.ReadFile(filepath.Join(dir, "vault-root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ca.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	root := roots[0]
	want := data + ` holds the trust bundle of a Vault-backed CA (warden serve --ca-upstream vault): the signing intermediate is in the running server's memory; see its log ("intermediate CA activated") or citadel_server_cert_chain_expiry_timestamp on /metrics.
Root 1:
  Subject:     CN=Example Mesh Root CA
  Issuer:      CN=Example Mesh Root CA
  Serial:      ` + fmt.Sprintf("%x", root.SerialNumber) + `
  Not before:  ` + root.NotBefore.UTC().Format(time.RFC3339) + `
  Not after:   ` + root.NotAfter.UTC().Format(time.RFC3339) + `
  Key:         ECDSA P-256
  CA:          true
  SHA-256:     ` + ca.Fingerprint(root) + `
`
	code, stdout, stderr := run(t, "ca", "info", "--data-dir", data)
	if code != 0 || stdout != want || stderr != "" {
		t.Fatalf("ca info: exit %d\nstdout:\n%s\nwant:\n%s\nstderr:\n%s", code, stdout, want, stderr)
	}
}
