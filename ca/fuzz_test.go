package ca_test

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// FuzzParseCSR: any input is parsed or rejected with ErrInvalidCSR.
// Seeds: testdata/fuzz/FuzzParseCSR.
func FuzzParseCSR(f *testing.F) {
	f.Add(catest.CSRFor(f, catest.Key(f, ca.ECDSAP256), callerX))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ca.ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ca.ErrInvalidCSR) {
				t.Fatalf("error does not wrap ErrInvalidCSR: %v", err)
			}
			return
		}
		if csr == nil {
			t.Fatal("nil CSR without error")
		}
	})
}

// FuzzSign: the whole signing path never panics, and it either issues a
// certificate for exactly the caller or fails with a CA sentinel error.
// FuzzSign feeds arbitrary CSRs to Sign (SANs allowed, so that the
// certificate builder sees DNS and IP names): a certificate comes out for
// the caller only, and its bytes parse back to the certificate Sign filled
// in without parsing.
func FuzzSign(f *testing.F) {
	a := catest.Authority(f, catest.Root(f, ca.CAOptions{}), func(c *ca.Config) { c.CSR.AllowDNSNames, c.CSR.AllowIPAddresses = true, true })
	f.Add(catest.CSRFor(f, catest.Key(f, ca.ECDSAP256), callerX))
	f.Add(catest.CSRFor(f, catest.Key(f, ca.ECDSAP256), callerY))
	f.Fuzz(func(t *testing.T, data []byte) {
		iss, err := a.Sign(ca.SignRequest{CSR: data, ID: callerX})
		if err != nil {
			if !errors.Is(err, ca.ErrInvalidCSR) && !errors.Is(err, ca.ErrIdentityMismatch) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if len(iss.Cert.URIs) != 1 || iss.Cert.URIs[0].String() != callerX.String() || iss.Cert.IsCA {
			t.Fatalf("issued %v (CA %t) for %s", iss.Cert.URIs, iss.Cert.IsCA, callerX)
		}
		parsed, err := x509.ParseCertificate(iss.Cert.Raw)
		if err != nil {
			t.Fatalf("the issued certificate does not parse: %v", err)
		}
		if d := fieldDiff(iss.Cert, parsed); d != "" {
			t.Fatalf("the certificate filled in differs from its parse: %s", d)
		}
	})
}
