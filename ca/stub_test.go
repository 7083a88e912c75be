package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// stub is the DER of a certificate request for key from tmpl, as a
// Kubernetes PodCertificateRequest carries it.
func stub(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	b, _ := pem.Decode(catest.CSR(t, key, tmpl))
	return b.Bytes
}

// TestSignStubIgnoresNames: a stub request is used for its key alone.
// Whatever its creator wrote in it (another workload's SPIFFE ID, DNS
// names, a subject) the leaf names the identity the signer was given and
// nothing else, even where the CSR policy would copy DNS SANs.
func TestSignStubIgnoresNames(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: clock}), catest.WithClock(clock), func(c *ca.Config) {
		c.CSR.AllowDNSNames, c.CSR.AllowIPAddresses = true, true
	})
	clock.Add(time.Hour)
	key := catest.Key(t, ca.ECDSAP256)
	req := stub(t, key, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		URIs:        []*url.URL{callerY.URL()},
		DNSNames:    []string{"kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
	})
	iss, err := a.Sign(ca.SignRequest{StubCSR: req, ID: callerX})
	if err != nil {
		t.Fatal(err)
	}
	checkLeafShape(t, iss.Cert, callerX)
	if !iss.Cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("the leaf is not for the stub's key")
	}
	// The same request as a CSR is refused: it names someone else.
	if _, err := a.Sign(ca.SignRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req}), ID: callerX}); !errors.Is(err, ca.ErrIdentityMismatch) {
		t.Errorf("as a CSR: %v, want ErrIdentityMismatch", err)
	}
	if _, err := a.Sign(ca.SignRequest{StubCSR: req, CSR: catest.CSR(t, key, nil), ID: callerX}); err == nil || err.Error() != "ca: invalid CSR: a request carries a CSR or a stub, not both" {
		t.Errorf("both: %v", err)
	}
}

// TestSignStubChecksSignature: a stub whose signature does not verify
// with its own key proves nothing and is refused.
func TestSignStubChecksSignature(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	req := stub(t, catest.Key(t, ca.ECDSAP256), nil)
	req[len(req)-3] ^= 0x40 // inside the signature
	_, err := a.Sign(ca.SignRequest{StubCSR: req, ID: callerX})
	if !errors.Is(err, ca.ErrInvalidCSR) {
		t.Fatalf("Sign = %v, want ErrInvalidCSR", err)
	}
	if _, err := a.Sign(ca.SignRequest{StubCSR: []byte("not DER"), ID: callerX}); !errors.Is(err, ca.ErrInvalidCSR) {
		t.Fatalf("Sign(garbage) = %v, want ErrInvalidCSR", err)
	}
}

// TestUnsupportedKeyTypes: the keys Kubernetes allows in a pod
// certificate request that warden does not issue to (Ed25519, P-521) are
// ErrUnsupportedKey, on both paths, with the message a CSR always had;
// RSA 3072 and 4096 are issued.
func TestUnsupportedKeyTypes(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	for _, c := range []struct {
		name string
		key  crypto.Signer
		msg  string
	}{
		{"P-521", p521, "ca: invalid CSR: ECDSA curve P-521 is not allowed (want P-256 or P-384)"},
		{"Ed25519", ed, "ca: invalid CSR: key type Ed25519 is not allowed (want ECDSA P-256/P-384 or RSA)"},
		{"RSA 1024", rsa1024, "ca: invalid CSR: RSA key of 1024 bits is too small (minimum 2048)"},
	} {
		for _, asStub := range []bool{true, false} {
			req := ca.SignRequest{ID: callerX}
			if asStub {
				req.StubCSR = stub(t, c.key, nil)
			} else {
				req.CSR = catest.CSR(t, c.key, nil)
			}
			_, err := a.Sign(req)
			if !errors.Is(err, ca.ErrUnsupportedKey) || !errors.Is(err, ca.ErrInvalidCSR) || err.Error() != c.msg {
				t.Errorf("%s (stub %v): %v, want %q as ErrUnsupportedKey and ErrInvalidCSR", c.name, asStub, err, c.msg)
			}
		}
	}
	rsa3072, _ := rsa.GenerateKey(rand.Reader, 3072)
	if _, err := a.Sign(ca.SignRequest{StubCSR: stub(t, rsa3072, nil), ID: callerX}); err != nil {
		t.Errorf("RSA 3072: %v", err)
	}
	// A bad signature is not an unsupported key.
	req := stub(t, catest.Key(t, ca.ECDSAP256), nil)
	req[len(req)-3] ^= 0x40
	if _, err := a.Sign(ca.SignRequest{StubCSR: req, ID: callerX}); errors.Is(err, ca.ErrUnsupportedKey) {
		t.Errorf("bad signature: %v is ErrUnsupportedKey", err)
	}
}

// TestSignLifetime: a lifetime is the leaf's whole validity, backdating
// included, in whole seconds even when the clock is not, and is still
// clamped to the signer's NotAfter; above MaxTTL it is refused, and a
// request may not name both a TTL and a lifetime.
func TestSignLifetime(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock, TTL: 48 * time.Hour})
	a := catest.Authority(t, root, catest.WithClock(clock), func(c *ca.Config) { c.MaxTTL = 30 * time.Hour })
	clock.Add(time.Hour + 700*time.Millisecond)
	key := catest.Key(t, ca.ECDSAP256)
	iss, err := a.Sign(ca.SignRequest{StubCSR: stub(t, key, nil), ID: callerX, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	if got := c.NotAfter.Sub(c.NotBefore); got != 24*time.Hour {
		t.Errorf("lifetime %s, want 24h", got)
	}
	if want := clock.Now().Add(-ca.DefaultBackdate).Truncate(time.Second); !c.NotBefore.Equal(want) {
		t.Errorf("NotBefore %s, want %s", c.NotBefore, want)
	}
	// Parsed back, the certificate says the same.
	parsed, err := x509.ParseCertificate(c.Raw)
	if err != nil || !parsed.NotBefore.Equal(c.NotBefore) || !parsed.NotAfter.Equal(c.NotAfter) {
		t.Errorf("parsed %v: %s..%s, signed %s..%s", err, parsed.NotBefore, parsed.NotAfter, c.NotBefore, c.NotAfter)
	}
	// Clamped to the root's end.
	clock.Add(40 * time.Hour)
	iss, err = a.Sign(ca.SignRequest{StubCSR: stub(t, key, nil), ID: callerX, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !iss.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want the root's %s", iss.Cert.NotAfter, root.Cert.NotAfter)
	}
	for _, c := range []struct {
		req  ca.SignRequest
		want string
	}{
		{ca.SignRequest{Lifetime: 31 * time.Hour}, "ca: invalid TTL: requested lifetime 31h0m0s exceeds the maximum 30h0m0s"},
		{ca.SignRequest{Lifetime: -time.Hour}, "ca: invalid TTL: lifetime -1h0m0s is negative"},
		{ca.SignRequest{Lifetime: time.Hour, TTL: time.Hour}, "ca: invalid TTL: a request names a TTL or a lifetime, not both"},
	} {
		c.req.ID, c.req.StubCSR = callerX, stub(t, key, nil)
		if _, err := a.Sign(c.req); !errors.Is(err, ca.ErrInvalidTTL) || err.Error() != c.want {
			t.Errorf("%+v: %v, want %q", c.req.Lifetime, err, c.want)
		}
	}
	if a.MaxTTL() != 30*time.Hour {
		t.Errorf("MaxTTL() = %s", a.MaxTTL())
	}
}
