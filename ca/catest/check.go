package catest

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// LintSources are the zlint sources that apply to a private SPIFFE PKI:
// the IETF profiles and the community lints. The CA/Browser Forum, EV,
// S/MIME, code-signing, root-program (Mozilla, Apple, Chrome) and ETSI
// sources govern publicly-trusted Web PKI certificates; among other things
// they forbid the URI SAN that is the whole point of an SVID, so they are
// excluded deliberately, not to hide findings.
var LintSources = lint.SourceList{lint.RFC3279, lint.RFC5280, lint.RFC5480, lint.RFC5891, lint.RFC8813, lint.Community}

// Zlint fails the test on any zlint error, warning or fatal result for c.
func Zlint(t testing.TB, what string, c *x509.Certificate) {
	t.Helper()
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: LintSources})
	if err != nil {
		t.Fatal(err)
	}
	zc, err := zx509.ParseCertificate(c.Raw)
	if err != nil {
		t.Fatalf("%s: zcrypto parse: %v", what, err)
	}
	rs := zlint.LintCertificateEx(zc, reg)
	var bad []string
	ran := 0
	for name, r := range rs.Results {
		switch r.Status {
		case lint.Pass:
			ran++
		case lint.Warn, lint.Error, lint.Fatal:
			ran++
			bad = append(bad, name+" ("+r.Status.String()+"): "+r.Details)
		}
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Errorf("%s: zlint %s", what, b)
	}
	if ran < 20 {
		t.Errorf("%s: only %d lints applied; the registry filter is wrong", what, ran)
	}
}

// OpenSSLVerify checks an issued chain (PEM elements: leaf,
// intermediates, root last) with the openssl a user would run: strict
// X.509 checking, as a TLS client and as a TLS server certificate, with
// only the last element trusted.
func OpenSSLVerify(t testing.TB, chain [][]byte) {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is required (installed by .ci/run): ", err)
	}
	if len(chain) < 2 {
		t.Fatalf("chain of %d elements: want a leaf and a root at least", len(chain))
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootF := write("root.pem", chain[len(chain)-1])
	leafF := write("leaf.pem", chain[0])
	var mid []string
	for _, c := range chain[1 : len(chain)-1] {
		mid = append(mid, string(c))
	}
	untrusted := write("untrusted.pem", []byte(strings.Join(mid, "")))
	for _, purpose := range []string{"sslclient", "sslserver"} {
		args := []string{"verify", "-x509_strict", "-purpose", purpose, "-CAfile", rootF}
		if len(chain) > 2 {
			args = append(args, "-untrusted", untrusted)
		}
		out, err := exec.Command(openssl, append(args, leafF)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl %s (%d-element chain): %v\n%s", strings.Join(args, " "), len(chain), err, out)
		}
	}
}
