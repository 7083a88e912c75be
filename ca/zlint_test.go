package ca_test

import (
	"crypto/x509"
	"sort"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// lintSources are the zlint sources that apply to a private SPIFFE PKI:
// the IETF profiles and the community lints. The CA/Browser Forum, EV,
// S/MIME, code-signing, root-program (Mozilla, Apple, Chrome) and ETSI
// sources govern publicly-trusted Web PKI certificates; among other things
// they forbid the URI SAN that is the whole point of an SVID, so they are
// excluded deliberately, not to hide findings.
var lintSources = lint.SourceList{lint.RFC3279, lint.RFC5280, lint.RFC5480, lint.RFC5891, lint.RFC8813, lint.Community}

// lintCert fails the test on any zlint error, warning or fatal result.
func lintCert(t *testing.T, what string, c *x509.Certificate) {
	t.Helper()
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
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

func TestZlintEveryShape(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(time.Now())
	for _, rootKT := range allCAKeyTypes {
		root := catest.Root(t, ca.CAOptions{KeyType: rootKT, Clock: clock, CommonName: "warden root CA"})
		lintCert(t, "root "+string(rootKT), root.Cert)
		inter, err := ca.NewIntermediate(root, ca.CAOptions{KeyType: rootKT, Clock: clock, Organization: "cluster.local", CommonName: "warden intermediate", TTL: 365 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		lintCert(t, "intermediate "+string(rootKT), inter.Cert)
		for _, signer := range []*ca.Material{root, inter} {
			a := catest.Authority(t, signer, catest.WithClock(clock))
			for _, kt := range allWorkloadKeyTypes {
				iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, kt), nil), ID: callerX})
				if err != nil {
					t.Fatal(err)
				}
				lintCert(t, "leaf "+string(kt)+" under "+signer.Cert.Subject.CommonName+" "+string(rootKT), iss.Cert)
			}
		}
	}
}
