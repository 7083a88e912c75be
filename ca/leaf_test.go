package ca_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// referenceLeaf is what crypto/x509 makes of the same template: the serial
// and validity of got, the key usages, SANs and key identifiers warden's
// leaves carry, signed by the same key.
func referenceLeaf(t *testing.T, got *x509.Certificate, issuer *ca.Material, csr *x509.CertificateRequest, rsaKey bool) *x509.Certificate {
	t.Helper()
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(csr.RawSubjectPublicKeyInfo, &spki); err != nil {
		t.Fatal(err)
	}
	ski := sha1.Sum(spki.PublicKey.Bytes)
	ku := x509.KeyUsageDigitalSignature
	if rsaKey {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: got.SerialNumber, NotBefore: got.NotBefore, NotAfter: got.NotAfter,
		KeyUsage: ku, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, SubjectKeyId: ski[:],
		URIs: got.URIs, DNSNames: got.DNSNames, IPAddresses: got.IPAddresses,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.Cert, csr.PublicKey, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// TestLeafMatchesX509 is the fast path's differential test: for thousands
// of random requests (every workload key type, random TTLs, DNS and IP
// SANs where allowed) under P-256, P-384 and RSA issuers, the certificate
// warden builds has the TBSCertificate crypto/x509 builds from the same
// template (the same serial and validity), byte for byte; its
// x509.Certificate, filled without parsing, equals what parsing its bytes
// gives, field by field; and it verifies with go-spiffe. A sample also
// passes zlint and openssl verify.
func TestLeafMatchesX509(t *testing.T) {
	t.Parallel()
	n := 3000
	if testing.Short() {
		n = 300
	}
	// Workload keys: RSA generation is slow, so a few RSA keys are reused.
	keys := map[ca.KeyType][]crypto.Signer{}
	for _, kt := range []ca.KeyType{ca.ECDSAP256, ca.ECDSAP384, ca.RSA2048} {
		for range 4 {
			keys[kt] = append(keys[kt], catest.Key(t, kt))
		}
	}
	kts := []ca.KeyType{ca.ECDSAP256, ca.ECDSAP384, ca.RSA2048}
	rng := mrand.New(mrand.NewPCG(1, 2))
	for _, caKT := range kts {
		// The wall clock: openssl verify checks validity against it.
		clock := catest.NewClock(time.Now())
		root := catest.Root(t, ca.CAOptions{KeyType: caKT, Clock: clock})
		a := catest.Authority(t, root, catest.WithClock(clock), func(c *ca.Config) {
			c.CSR.AllowDNSNames, c.CSR.AllowIPAddresses = true, true
		})
		bundle := x509bundle.FromX509Authorities(catest.TrustDomain, root.Roots)
		for i := range n / len(kts) {
			kt := kts[rng.IntN(len(kts))]
			key := keys[kt][rng.IntN(len(keys[kt]))]
			id := catest.ID(fmt.Sprintf("ns%d", rng.IntN(50)), fmt.Sprintf("sa-%d", rng.IntN(1000)))
			tmpl := &x509.CertificateRequest{}
			if rng.IntN(2) == 0 {
				u, _ := url.Parse(id.String())
				tmpl.URIs = []*url.URL{u}
			}
			for range rng.IntN(3) {
				tmpl.DNSNames = append(tmpl.DNSNames, fmt.Sprintf("svc%d.ns%d.svc.cluster.local", rng.IntN(100), rng.IntN(10)))
			}
			for range rng.IntN(3) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, net.IPv4(10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))))
			}
			if rng.IntN(4) == 0 {
				tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(fmt.Sprintf("fd00::%x", rng.IntN(65536))))
			}
			ttl := time.Duration(rng.IntN(48*3600)+1) * time.Second
			csrPEM := catest.CSR(t, key, tmpl)
			iss, err := a.Sign(ca.SignRequest{CSR: csrPEM, ID: id, TTL: ttl})
			if err != nil {
				t.Fatalf("%s leaf %d (%s): %v", caKT, i, kt, err)
			}
			csr, _ := ca.ParseCSR(csrPEM)
			rsaKey := kt == ca.RSA2048
			ref := referenceLeaf(t, iss.Cert, root, csr, rsaKey)
			if string(ref.RawTBSCertificate) != string(iss.Cert.RawTBSCertificate) {
				t.Fatalf("%s leaf %d (%s): TBSCertificate differs from crypto/x509's\n got %x\nwant %x", caKT, i, kt, iss.Cert.RawTBSCertificate, ref.RawTBSCertificate)
			}
			parsed, err := x509.ParseCertificate(iss.Cert.Raw)
			if err != nil {
				t.Fatalf("%s leaf %d: %v", caKT, i, err)
			}
			if diff := fieldDiff(iss.Cert, parsed); diff != "" {
				t.Fatalf("%s leaf %d (%s): the certificate filled in differs from its parse: %s", caKT, i, kt, diff)
			}
			if _, _, err := x509svid.Verify([]*x509.Certificate{iss.Cert}, bundle, x509svid.WithTime(clock.Now())); err != nil {
				t.Fatalf("%s leaf %d: go-spiffe: %v", caKT, i, err)
			}
			if i%250 == 0 {
				catest.Zlint(t, fmt.Sprintf("%s leaf %d", caKT, i), iss.Cert)
				catest.OpenSSLVerify(t, iss.Chain)
			}
		}
	}
}

// fieldDiff names the fields of two certificates that differ.
func fieldDiff(got, want *x509.Certificate) string {
	g, w := reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem()
	var out string
	for i := range g.NumField() {
		if !reflect.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			out += fmt.Sprintf("\n  %s: got %#v, want %#v", g.Type().Field(i).Name, g.Field(i).Interface(), w.Field(i).Interface())
		}
	}
	return out
}
