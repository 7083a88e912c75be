package ca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

var (
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	start               = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	callerX             = catest.ID("a", "x")
	callerY             = catest.ID("b", "y")
	allCAKeyTypes       = []ca.KeyType{ca.ECDSAP256, ca.ECDSAP384, ca.RSA2048}
	allWorkloadKeyTypes = []ca.KeyType{ca.ECDSAP256, ca.ECDSAP384, ca.RSA2048, ca.RSA4096}
)

func TestSignLeafShape(t *testing.T) {
	t.Parallel()
	for _, caKT := range allCAKeyTypes {
		clock := catest.NewClock(start)
		root := catest.Root(t, ca.CAOptions{KeyType: caKT, Clock: clock})
		a := catest.Authority(t, root, catest.WithClock(clock))
		clock.Add(time.Hour) // so that backdating is not clamped by the root
		for _, kt := range allWorkloadKeyTypes {
			t.Run(string(caKT)+"/"+string(kt), func(t *testing.T) {
				iss, err := a.Sign(ca.SignRequest{CSR: catest.CSRFor(t, catest.Key(t, kt), callerX), ID: callerX})
				if err != nil {
					t.Fatal(err)
				}
				checkLeafShape(t, iss.Cert, callerX)
				if want := clock.Now().Add(-ca.DefaultBackdate); !iss.Cert.NotBefore.Equal(want) {
					t.Errorf("NotBefore = %s, want %s (backdated by %s)", iss.Cert.NotBefore, want, ca.DefaultBackdate)
				}
				if want := clock.Now().Add(ca.DefaultTTL); !iss.Cert.NotAfter.Equal(want) {
					t.Errorf("NotAfter = %s, want %s", iss.Cert.NotAfter, want)
				}
				if len(iss.Chain) != 2 {
					t.Fatalf("chain has %d elements, want leaf and root", len(iss.Chain))
				}
				id, _, err := x509svid.Verify([]*x509.Certificate{iss.Cert}, a.Bundle(), x509svid.WithTime(clock.Now()))
				if err != nil || id != callerX {
					t.Fatalf("x509svid.Verify = %v, %v", id, err)
				}
			})
		}
	}
}

// checkLeafShape asserts the leaf profile of docs/design.md §2 (docs/ca.md).
func checkLeafShape(t *testing.T, c *x509.Certificate, id spiffeid.ID) {
	t.Helper()
	if len(c.RawSubject) != 2 || len(c.Subject.Names) != 0 {
		t.Errorf("subject = %q, want empty", c.Subject)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want [%s]", c.URIs, id)
	}
	if len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: %v %v %v", c.DNSNames, c.IPAddresses, c.EmailAddresses)
	}
	sans := 0
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oidSAN) {
			sans++
			if !ext.Critical {
				t.Error("SAN extension is not critical although the subject is empty")
			}
		}
	}
	if sans != 1 {
		t.Errorf("%d SAN extensions, want 1", sans)
	}
	want := x509.KeyUsageDigitalSignature
	if _, ok := c.PublicKey.(*rsa.PublicKey); ok {
		want |= x509.KeyUsageKeyEncipherment // RFC 8813 forbids it for ECDSA
	}
	if c.KeyUsage != want {
		t.Errorf("KeyUsage = %b, want %b", c.KeyUsage, want)
	}
	if len(c.ExtKeyUsage) != 2 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || c.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v, want serverAuth, clientAuth", c.ExtKeyUsage)
	}
	if c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("IsCA = %t, BasicConstraintsValid = %t; want a non-CA with basic constraints", c.IsCA, c.BasicConstraintsValid)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %x is not a positive number of at most 128 bits", c.SerialNumber)
	}
}

func TestSerialsAreRandom128Bit(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	long := 0
	for range 200 {
		s, err := ca.NewSerial()
		if err != nil {
			t.Fatal(err)
		}
		if seen[s.String()] {
			t.Fatalf("serial %x repeated", s)
		}
		seen[s.String()] = true
		if s.BitLen() > 120 {
			long++
		}
	}
	// With 128 random bits, fewer than 1 in 256 serials are under 121 bits.
	if long < 190 {
		t.Errorf("only %d of 200 serials use more than 120 bits; not 128-bit random", long)
	}
}

func TestSignTTL(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock, TTL: 48 * time.Hour})
	a := catest.Authority(t, root, catest.WithClock(clock), func(c *ca.Config) {
		c.DefaultTTL = time.Hour
		c.MaxTTL = 72 * time.Hour
	})
	key := catest.Key(t, ca.ECDSAP256)
	csr := catest.CSR(t, key, nil)
	cases := []struct {
		name    string
		ttl     time.Duration
		wantAft time.Time
		wantErr string
	}{
		{"default", 0, start.Add(time.Hour), ""},
		{"explicit", 2 * time.Hour, start.Add(2 * time.Hour), ""},
		{"clamped to the CA", 60 * time.Hour, root.Cert.NotAfter, ""},
		{"over max", 73 * time.Hour, time.Time{}, "ca: invalid TTL: requested 73h0m0s exceeds the maximum 72h0m0s"},
		{"negative", -time.Second, time.Time{}, "ca: invalid TTL: -1s is negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := a.Sign(ca.SignRequest{CSR: csr, ID: callerX, TTL: tc.ttl})
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr || !errors.Is(err, ca.ErrInvalidTTL) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !iss.Cert.NotAfter.Equal(tc.wantAft) {
				t.Errorf("NotAfter = %s, want %s", iss.Cert.NotAfter, tc.wantAft)
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: clock}), catest.WithClock(clock))
	p256 := catest.Key(t, ca.ECDSAP256)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	badSig := catest.CSR(t, p256, nil)
	badSig = tamperCSRSignature(t, badSig)
	uri := func(s string) *url.URL { u, _ := url.Parse(s); return u }
	cases := []struct {
		name    string
		csr     []byte
		id      spiffeid.ID
		wantErr error
		msg     string
	}{
		{"CSR for another identity", catest.CSRFor(t, p256, callerY), callerX, ca.ErrIdentityMismatch,
			"ca: identity mismatch: CSR names spiffe://cluster.local/ns/b/sa/y but the caller is spiffe://cluster.local/ns/a/sa/x"},
		{"two URI SANs", catest.CSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{callerX.URL(), uri("spiffe://cluster.local/ns/a/sa/z")}}), callerX, ca.ErrIdentityMismatch,
			"ca: identity mismatch: CSR has 2 URI SANs; at most one (the caller's SPIFFE ID) is allowed"},
		{"caller outside the trust domain", catest.CSR(t, p256, nil), spiffeid.RequireFromString("spiffe://evil.example/ns/a/sa/x"), ca.ErrIdentityMismatch,
			"ca: identity mismatch: caller spiffe://evil.example/ns/a/sa/x is outside trust domain cluster.local"},
		{"DNS SAN not allowed", catest.CSR(t, p256, &x509.CertificateRequest{DNSNames: []string{"evil.example.com"}}), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: DNS SANs are not allowed (got evil.example.com)"},
		{"IP SAN not allowed", catest.CSR(t, p256, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: IP SANs are not allowed (got 10.0.0.1)"},
		{"email SAN not allowed", catest.CSR(t, p256, &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}}), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: email SANs are not allowed (got a@example.com)"},
		{"RSA 1024", catest.CSR(t, rsa1024, nil), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: RSA key of 1024 bits is too small (minimum 2048)"},
		{"P-521", catest.CSR(t, p521, nil), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: ECDSA curve P-521 is not allowed (want P-256 or P-384)"},
		{"Ed25519", catest.CSR(t, edKey, nil), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: key type Ed25519 is not allowed (want ECDSA P-256/P-384 or RSA)"},
		{"bad signature", badSig, callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: signature does not verify with the CSR's public key"},
		{"empty", nil, callerX, ca.ErrInvalidCSR, "ca: invalid CSR: empty"},
		{"not PEM", []byte("hello"), callerX, ca.ErrInvalidCSR, "ca: invalid CSR: no PEM block found"},
		{"certificate instead of CSR", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), callerX, ca.ErrInvalidCSR,
			`ca: invalid CSR: PEM block is "CERTIFICATE", expected CERTIFICATE REQUEST`},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: malformed DER: "}, // the rest is Go's asn1 detail
		{"trailing data", append(catest.CSR(t, p256, nil), "junk"...), callerX, ca.ErrInvalidCSR,
			"ca: invalid CSR: unexpected data after the PEM block"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := a.Sign(ca.SignRequest{CSR: tc.csr, ID: tc.id})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got := err.Error(); got != tc.msg && !(strings.HasSuffix(tc.msg, ": ") && strings.HasPrefix(got, tc.msg)) {
				t.Fatalf("err = %q\nwant  %q", err, tc.msg)
			}
		})
	}
}

// tamperCSRSignature flips a bit in the CSR's signature.
func tamperCSRSignature(t *testing.T, csrPEM []byte) []byte {
	t.Helper()
	b, _ := pem.Decode(csrPEM)
	der := append([]byte(nil), b.Bytes...)
	der[len(der)-3] ^= 0x01
	return pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: der})
}

func TestSignAllowsSANsWhenConfigured(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}), func(c *ca.Config) {
		c.CSR = ca.CSRPolicy{AllowDNSNames: true, AllowIPAddresses: true}
	})
	csr := catest.CSR(t, catest.Key(t, ca.ECDSAP256), &x509.CertificateRequest{
		DNSNames: []string{"flaskapp.default.svc"}, IPAddresses: []net.IP{net.IPv4(10, 1, 2, 3)}})
	iss, err := a.Sign(ca.SignRequest{CSR: csr, ID: callerX})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	if len(c.DNSNames) != 1 || c.DNSNames[0] != "flaskapp.default.svc" || len(c.IPAddresses) != 1 || len(c.URIs) != 1 {
		t.Fatalf("SANs = %v %v %v", c.URIs, c.DNSNames, c.IPAddresses)
	}
	bad := catest.CSR(t, catest.Key(t, ca.ECDSAP256), &x509.CertificateRequest{DNSNames: []string{"bad_name.example"}})
	_, err = a.Sign(ca.SignRequest{CSR: bad, ID: callerX})
	if want := `ca: invalid CSR: DNS SAN "bad_name.example": invalid character '_'`; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestSignIgnoresCSRRequestForCA(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	csr := catest.CSR(t, catest.Key(t, ca.ECDSAP256), &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "root-wannabe", Organization: []string{"Evil"}},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
	})
	iss, err := a.Sign(ca.SignRequest{CSR: csr, ID: callerX})
	if err != nil {
		t.Fatal(err)
	}
	checkLeafShape(t, iss.Cert, callerX) // not a CA, empty subject
}

func TestSignNotReady(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, nil)
	_, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: callerX})
	if !errors.Is(err, ca.ErrNotReady) || err.Error() != "ca: CA not ready: no signing material loaded" {
		t.Fatalf("err = %v", err)
	}
	if ready := a.Ready(); ready == nil || ready.Error() != err.Error() {
		t.Fatalf("Ready = %v, want %v", ready, err)
	}
	clock := catest.NewClock(start)
	a = catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: clock, TTL: time.Hour}), catest.WithClock(clock))
	if err := a.Ready(); err != nil {
		t.Fatalf("Ready = %v with a valid root", err)
	}
	clock.Add(2 * time.Hour)
	_, err = a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: callerX})
	if !errors.Is(err, ca.ErrNotReady) || err.Error() != "ca: CA not ready: signing certificate expired at 2026-03-01T13:00:00Z" {
		t.Fatalf("err = %v", err)
	}
	if ready := a.Ready(); ready == nil || ready.Error() != err.Error() {
		t.Fatalf("Ready = %v, want %v", ready, err)
	}
}

func TestSignThroughIntermediate(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock, KeyType: ca.ECDSAP384})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Clock: clock, CommonName: "warden intermediate", Organization: "cluster.local", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, inter, catest.WithClock(clock))
	clock.Add(time.Hour)
	iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.RSA2048), nil), ID: callerX, TTL: 90 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(iss.Chain) != 3 {
		t.Fatalf("chain has %d elements, want leaf, intermediate, root", len(iss.Chain))
	}
	if !iss.Cert.NotAfter.Equal(inter.Cert.NotAfter) {
		t.Errorf("leaf NotAfter %s not clamped to the intermediate's %s", iss.Cert.NotAfter, inter.Cert.NotAfter)
	}
	certs := parseChain(t, iss.Chain)
	if !certs[2].Equal(root.Cert) || !certs[1].Equal(inter.Cert) {
		t.Fatal("chain is not leaf, intermediate, root")
	}
	if _, _, err := x509svid.Verify(certs[:2], a.Bundle(), x509svid.WithTime(clock.Now())); err != nil {
		t.Fatal(err)
	}
}

func parseChain(t *testing.T, chain [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, p := range chain {
		cs, err := ca.ParseCerts(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cs...)
	}
	return out
}

// TestSignRefusesTheCAsNames: even with DNS and IP SANs allowed, no
// workload gets a name that lets it pose as the CA (its serving names and
// addresses, localhost, loopback, wildcards), an IP address written as a
// DNS name when IP SANs are off, or an RSA key with an odd exponent; and a
// refusal repeats only a few of many SANs.
func TestSignRefusesTheCAsNames(t *testing.T) {
	t.Parallel()
	reserved := []string{"warden.warden-system.svc", "istiod.istio-system.svc", "192.0.2.10"}
	allow := catest.Authority(t, catest.Root(t, ca.CAOptions{}), func(c *ca.Config) {
		c.CSR = ca.CSRPolicy{AllowDNSNames: true, AllowIPAddresses: true, Reserved: reserved}
	})
	dnsOnly := catest.Authority(t, catest.Root(t, ca.CAOptions{}), func(c *ca.Config) {
		c.CSR = ca.CSRPolicy{AllowDNSNames: true, Reserved: reserved}
	})
	key := catest.Key(t, ca.ECDSAP256)
	many := make([]string, 50)
	for i := range many {
		many[i] = fmt.Sprintf("n%d.example", i)
	}
	for _, c := range []struct {
		a    *ca.Authority
		req  *x509.CertificateRequest
		want string
	}{
		{allow, &x509.CertificateRequest{DNSNames: []string{"warden.warden-system.svc"}}, `ca: identity mismatch: DNS SAN "warden.warden-system.svc" is one of the CA's own names`},
		{allow, &x509.CertificateRequest{DNSNames: []string{"Istiod.Istio-System.svc."}}, `ca: identity mismatch: DNS SAN "Istiod.Istio-System.svc." is one of the CA's own names`},
		{allow, &x509.CertificateRequest{DNSNames: []string{"localhost"}}, `ca: identity mismatch: DNS SAN "localhost" is one of the CA's own names`},
		{allow, &x509.CertificateRequest{DNSNames: []string{"*.warden-system.svc"}}, `ca: invalid CSR: DNS SAN "*.warden-system.svc": wildcard names are not issued to workloads`},
		{allow, &x509.CertificateRequest{DNSNames: []string{"127.0.0.1"}}, `ca: identity mismatch: DNS SAN "127.0.0.1" is one of the CA's own names`},
		{allow, &x509.CertificateRequest{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, `ca: identity mismatch: IP SAN 127.0.0.1 is one of the CA's own addresses`},
		{allow, &x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("192.0.2.10")}}, `ca: identity mismatch: IP SAN 192.0.2.10 is one of the CA's own addresses`},
		{dnsOnly, &x509.CertificateRequest{DNSNames: []string{"10.1.2.3"}}, `ca: invalid CSR: DNS SAN "10.1.2.3" is an IP address, and IP SANs are not allowed`},
		{catest.Authority(t, catest.Root(t, ca.CAOptions{})), &x509.CertificateRequest{DNSNames: many}, "ca: invalid CSR: DNS SANs are not allowed (got n0.example, n1.example, n2.example, n3.example, n4.example and 45 more)"},
	} {
		_, err := c.a.Sign(ca.SignRequest{CSR: catest.CSR(t, key, c.req), ID: callerX})
		if err == nil || err.Error() != c.want {
			t.Errorf("%v %v: %v\nwant %s", c.req.DNSNames, c.req.IPAddresses, err, c.want)
		}
	}
	tooMany := make([]string, 101)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("n%d.example", i)
	}
	if _, err := allow.Sign(ca.SignRequest{CSR: catest.CSR(t, key, &x509.CertificateRequest{DNSNames: tooMany}), ID: callerX}); err == nil || err.Error() != "ca: invalid CSR: 101 SANs; at most 100 are allowed" {
		t.Errorf("101 SANs: %v", err)
	}
	// RSA with a public exponent other than 65537 (the policy refuses it
	// before any signature is checked).
	real, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	oddCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, real)
	if err != nil {
		t.Fatal(err)
	}
	// e = 65537 is INTEGER 01 00 01; make it 65539 (same length).
	at := bytes.Index(oddCSR, []byte{0x02, 0x03, 0x01, 0x00, 0x01})
	if at < 0 {
		t.Fatal("no exponent in the CSR")
	}
	oddCSR[at+4] = 0x03
	_, err = allow.Sign(ca.SignRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: oddCSR}), ID: callerX})
	if err == nil || !strings.Contains(err.Error(), "RSA public exponent 65539 is not allowed (want 65537)") {
		t.Errorf("exponent 65539: %v", err)
	}
}
