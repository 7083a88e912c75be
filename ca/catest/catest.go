// Package catest holds fixtures for tests of warden's CA: a settable
// clock, CSR builders, and authorities built with modifier functions.
package catest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// Clock is a settable ca.Clock whose After channels fire when Add moves
// the time past them.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewClock starts a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now implements ca.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock forward, firing the After channels now due.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// After returns a channel that receives the time once the clock has been
// moved d forward.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Waiters is how many After channels are pending, so a test can wait
// until a goroutine is parked on the clock before moving it.
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

var _ ca.Clock = (*Clock)(nil)

// TrustDomain is the fixtures' trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

// ID returns spiffe://cluster.local/ns/<ns>/sa/<sa>.
func ID(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromSegments(TrustDomain, "ns", ns, "sa", sa)
}

// Key generates a key of type kt or fails the test.
func Key(t testing.TB, kt ca.KeyType) crypto.Signer {
	t.Helper()
	k, err := ca.GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CSR builds a PEM CSR for key from tmpl (which may be nil).
func CSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// CSRFor builds a CSR whose only URI SAN is id.
func CSRFor(t testing.TB, key crypto.Signer, id spiffeid.ID) []byte {
	return CSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}})
}

// Root makes a self-signed root with opts (ECDSA P-256, 10 years by default).
func Root(t testing.TB, opts ca.CAOptions) *ca.Material {
	t.Helper()
	if opts.Organization == "" {
		opts.Organization = TrustDomain.Name()
	}
	if opts.MaxPathLen == 0 {
		opts.MaxPathLen = -1
	}
	m, err := ca.NewSelfSigned(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Authority builds an authority over m with cfg modified by mods.
func Authority(t testing.TB, m *ca.Material, mods ...func(*ca.Config)) *ca.Authority {
	t.Helper()
	cfg := ca.Config{TrustDomain: TrustDomain}
	for _, mod := range mods {
		mod(&cfg)
	}
	a, err := ca.New(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// WithClock sets the authority's clock.
func WithClock(c ca.Clock) func(*ca.Config) { return func(cfg *ca.Config) { cfg.Clock = c } }

// Upstream is an in-process ca.Upstream that signs intermediates with a
// local root, for the core's own tests (the Vault upstream is tested
// against a real Vault in ca/vault). Err, when set, fails every request.
type Upstream struct {
	Root  *ca.Material
	Clock ca.Clock
	// Mutate, if set, edits each intermediate template before signing.
	Mutate func(*x509.Certificate)

	mu    sync.Mutex
	err   error
	calls int
}

// SetErr makes every following request fail with err (nil: succeed).
func (u *Upstream) SetErr(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.err = err
}

// Calls is how many requests the upstream has received.
func (u *Upstream) Calls() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls
}

// SignIntermediate implements ca.Upstream.
func (u *Upstream) SignIntermediate(_ context.Context, req ca.IntermediateRequest) (*ca.UpstreamChain, error) {
	u.mu.Lock()
	u.calls++
	err := u.err
	u.mu.Unlock()
	if err != nil {
		return nil, err
	}
	csr, err := ca.ParseCSR(req.CSR)
	if err != nil {
		return nil, err
	}
	serial, err := ca.NewSerial()
	if err != nil {
		return nil, err
	}
	now := u.Clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               csr.Subject,
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(req.TTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if u.Mutate != nil {
		u.Mutate(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, u.Root.Cert, csr.PublicKey, u.Root.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &ca.UpstreamChain{Cert: cert, Roots: []*x509.Certificate{u.Root.Cert}}, nil
}

var _ ca.Upstream = (*Upstream)(nil)

// TrustDomainSubject is the subject warden gives its intermediates in the
// fixtures' trust domain.
func TrustDomainSubject() pkix.Name {
	return pkix.Name{Organization: []string{TrustDomain.Name()}, CommonName: "warden intermediate CA"}
}

// SANExtension is the subjectAltName extension for the names, encoded as
// crypto/x509 encodes it (for templates that set it themselves, e.g.
// critical, as Istio's agent does).
func SANExtension(uris []*url.URL, dns []string, ips []net.IP, emails []string) pkix.Extension {
	var names []asn1.RawValue
	for _, e := range emails {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 1, Bytes: []byte(e)})
	}
	for _, d := range dns {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(d)})
	}
	for _, u := range uris {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u.String())})
	}
	for _, ip := range ips {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 7, Bytes: ip})
	}
	der, err := asn1.Marshal(names)
	if err != nil {
		panic(err) // raw values always marshal
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: der}
}
