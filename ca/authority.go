package ca

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for Config.
const (
	DefaultTTL      = 24 * time.Hour
	DefaultMaxTTL   = 90 * 24 * time.Hour
	DefaultBackdate = time.Minute
)

// Meter receives one observation per signing attempt. Implementations live
// at the edges (Prometheus); the core only calls it.
type Meter interface {
	ObserveSign(d time.Duration, err error)
}

type noMeter struct{}

func (noMeter) ObserveSign(time.Duration, error) {}

// Config holds the authority's settings and dependencies. Zero values take
// the defaults.
type Config struct {
	TrustDomain spiffeid.TrustDomain // required
	DefaultTTL  time.Duration        // leaf lifetime when the request names none
	MaxTTL      time.Duration        // a larger request is ErrInvalidTTL
	Backdate    time.Duration        // NotBefore = now - Backdate, for clock skew
	CSR         CSRPolicy
	Clock       Clock
	Meter       Meter
}

// Authority signs workload certificates with its active CA material.
type Authority struct {
	cfg     Config
	active  atomic.Pointer[slot]
	bundles *Bundles // fed on every activation
}

// slot is one activated Material with everything the hot path needs
// precomputed.
type slot struct {
	m      *Material
	signer *leafSigner
	tail   [][]byte // PEM of intermediates then the anchoring root
	bundle *x509bundle.Bundle
	notAft time.Time
}

// SignRequest asks for a leaf certificate for an authenticated caller.
type SignRequest struct {
	CSR []byte // PEM certificate request
	// StubCSR, instead of CSR, is a DER certificate request used for its
	// public key alone, the signature proving its possession: its subject
	// and SANs are ignored and the leaf names ID only, whatever the
	// request asked for. A Kubernetes PodCertificateRequest carries one,
	// written by whoever created the request, so nothing in it may shape
	// the certificate.
	StubCSR []byte
	ID      spiffeid.ID   // the caller's authenticated identity
	TTL     time.Duration // 0 means Config.DefaultTTL
	// Lifetime, instead of TTL, is the leaf's whole validity, NotAfter -
	// NotBefore with the backdating included, for callers held to an
	// exact bound (a PodCertificateRequest's maxExpirationSeconds). It is
	// still clamped to the signer's NotAfter; above MaxTTL it is
	// ErrInvalidTTL.
	Lifetime time.Duration
	// Hosts (DNS names and IP addresses) are added to the leaf regardless
	// of CSRPolicy; only warden itself sets them, for its serving
	// certificate.
	Hosts []string
}

// Issued is a signed leaf and its chain.
type Issued struct {
	Cert  *x509.Certificate
	Chain [][]byte // PEM: leaf, intermediates, root last
}

// New makes an authority signing with m. m may be nil: the authority is then
// not ready (ErrNotReady) until Activate.
func New(cfg Config, m *Material) (*Authority, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.DefaultTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("ca: default TTL %s exceeds max TTL %s", cfg.DefaultTTL, cfg.MaxTTL)
	}
	if cfg.Backdate == 0 {
		cfg.Backdate = DefaultBackdate
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Meter == nil {
		cfg.Meter = noMeter{}
	}
	a := &Authority{cfg: cfg, bundles: NewBundles(nil)}
	if m != nil {
		if err := a.Activate(m); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// TrustDomain is the trust domain the authority issues identities in.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.cfg.TrustDomain }

// MaxTTL is the longest leaf lifetime the authority issues.
func (a *Authority) MaxTTL() time.Duration { return a.cfg.MaxTTL }

// Activate validates m and makes it the signing material; in-flight
// signatures finish with the old one.
func (a *Authority) Activate(m *Material) error {
	if err := m.Validate(a.cfg.Clock.Now()); err != nil {
		return err
	}
	s, err := newLeafSigner(m)
	if err != nil {
		return err
	}
	anchor, err := anchorOf(m)
	if err != nil {
		return err
	}
	var tail [][]byte
	if !m.selfSigned() {
		tail = append(tail, EncodeCerts(m.Cert))
	}
	for _, c := range m.Chain {
		tail = append(tail, EncodeCerts(c))
	}
	tail = append(tail, EncodeCerts(anchor))
	// The bundle's first root is the one new leaves chain to, so that a
	// consumer can tell from the bundle alone that signing moved (and
	// renew early): a plugged-in root-cert.pem may list its roots in any
	// order.
	roots := MergeRoots([]*x509.Certificate{anchor}, m.Roots)
	a.active.Store(&slot{
		m:      m,
		signer: s,
		tail:   tail,
		bundle: x509bundle.FromX509Authorities(a.cfg.TrustDomain, roots),
		notAft: m.NotAfter(),
	})
	a.bundles.Set(roots)
	return nil
}

// Replace activates m unless the authority already signs with the same
// certificate under the same roots (a watcher re-reading unchanged CA
// files), and reports whether it activated.
func (a *Authority) Replace(m *Material) (bool, error) {
	if cur := a.Material(); cur != nil && cur.Cert.Equal(m.Cert) && SameRoots(cur.Roots, m.Roots) {
		return false, nil
	}
	return true, a.Activate(m)
}

// Bundles is the trust bundle's publisher: subscribers hear of every
// activation that changes the roots (a new upstream root, a plugged-in CA
// replaced, a rotation), and of nothing else.
func (a *Authority) Bundles() *Bundles { return a.bundles }

// anchorOf finds the root that the signing chain ends at.
func anchorOf(m *Material) (*x509.Certificate, error) {
	top := m.Cert
	if len(m.Chain) > 0 {
		top = m.Chain[len(m.Chain)-1]
	}
	for _, r := range m.Roots {
		if r.Equal(top) || top.CheckSignatureFrom(r) == nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("ca: no root in %s signed %s", FileRootCert, top.Subject)
}

// Material returns the active CA material, or nil before activation.
func (a *Authority) Material() *Material {
	if s := a.active.Load(); s != nil {
		return s.m
	}
	return nil
}

// Bundle returns the trust bundle (all roots), or nil before activation.
func (a *Authority) Bundle() *x509bundle.Bundle {
	if s := a.active.Load(); s != nil {
		return s.bundle
	}
	return nil
}

// Sign checks req and issues a leaf SVID for req.ID.
func (a *Authority) Sign(req SignRequest) (*Issued, error) {
	start := a.cfg.Clock.Now()
	iss, err := a.sign(req, start)
	a.cfg.Meter.ObserveSign(a.cfg.Clock.Now().Sub(start), err)
	return iss, err
}

// Ready says whether the authority can sign now: nil, or an ErrNotReady
// saying why (no material yet, or the signing certificate expired).
func (a *Authority) Ready() error {
	return ready(a.active.Load(), a.cfg.Clock.Now())
}

func ready(s *slot, now time.Time) error {
	if s == nil {
		return fmt.Errorf("ca: %w: no signing material loaded", ErrNotReady)
	}
	if !now.Before(s.notAft) {
		return fmt.Errorf("ca: %w: signing certificate expired at %s", ErrNotReady, s.notAft.UTC().Format(time.RFC3339))
	}
	return nil
}

func (a *Authority) sign(req SignRequest, now time.Time) (*Issued, error) {
	s := a.active.Load()
	if s == nil {
		return nil, ready(s, now)
	}
	if req.ID.TrustDomain() != a.cfg.TrustDomain {
		return nil, fmt.Errorf("ca: %w: caller %s is outside trust domain %s", ErrIdentityMismatch, req.ID, a.cfg.TrustDomain)
	}
	ttl := req.TTL
	switch {
	case req.Lifetime != 0 && ttl != 0:
		return nil, fmt.Errorf("ca: %w: a request names a TTL or a lifetime, not both", ErrInvalidTTL)
	case req.Lifetime < 0:
		return nil, fmt.Errorf("ca: %w: lifetime %s is negative", ErrInvalidTTL, req.Lifetime)
	case req.Lifetime > a.cfg.MaxTTL:
		return nil, fmt.Errorf("ca: %w: requested lifetime %s exceeds the maximum %s", ErrInvalidTTL, req.Lifetime, a.cfg.MaxTTL)
	case req.Lifetime != 0:
	case ttl == 0:
		ttl = a.cfg.DefaultTTL
	case ttl < 0:
		return nil, fmt.Errorf("ca: %w: %s is negative", ErrInvalidTTL, ttl)
	case ttl > a.cfg.MaxTTL:
		return nil, fmt.Errorf("ca: %w: requested %s exceeds the maximum %s", ErrInvalidTTL, ttl, a.cfg.MaxTTL)
	}
	if err := ready(s, now); err != nil {
		return nil, err
	}
	var (
		csr   *x509.CertificateRequest
		extra []string
		err   error
	)
	switch {
	case req.StubCSR != nil && req.CSR != nil:
		return nil, fmt.Errorf("ca: %w: a request carries a CSR or a stub, not both", ErrInvalidCSR)
	case req.StubCSR != nil:
		if csr, err = parseCSRDER(req.StubCSR); err != nil {
			return nil, err
		}
		if err := a.cfg.CSR.checkKey(csr); err != nil {
			return nil, err
		}
	default:
		if csr, err = parseCSRSigning(req.CSR); err != nil {
			return nil, err
		}
		if extra, err = a.cfg.CSR.check(csr, req.ID); err != nil {
			return nil, err
		}
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: %w: signature does not verify with the CSR's public key", ErrInvalidCSR)
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-a.cfg.Backdate)
	if notBefore.Before(s.m.Cert.NotBefore) {
		notBefore = s.m.Cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if req.Lifetime != 0 {
		// Whole seconds, as the certificate holds them, so that the
		// lifetime is exact.
		notBefore = notBefore.Truncate(time.Second)
		notAfter = notBefore.Add(req.Lifetime)
	}
	if notAfter.After(s.notAft) {
		notAfter = s.notAft
	}
	_, rsaKey := csr.PublicKey.(*rsa.PublicKey)
	hosts := append([]string{req.ID.String()}, extra...)
	hosts = append(hosts, req.Hosts...)
	cert, err := s.signer.sign(serial, notBefore, notAfter, csr, rsaKey, splitHosts(hosts))
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: %w", req.ID, err)
	}
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	chain := make([][]byte, 0, 1+len(s.tail))
	chain = append(chain, leafPEM)
	chain = append(chain, s.tail...)
	return &Issued{Cert: cert, Chain: chain}, nil
}
