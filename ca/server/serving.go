package server

import (
	"crypto/tls"
	"log/slog"
	"sync"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// ServingIssuer issues warden's serving certificate: the Authority, or
// during a root rotation the material that stays trusted longest.
type ServingIssuer interface {
	Material() *ca.Material
	IssueServing(ca.ServingOptions) (*tls.Certificate, error)
}

var _ ServingIssuer = (*ca.Authority)(nil)

// ServingCert is warden's own TLS certificate, issued by its CA and
// re-issued once half its lifetime has passed (or the CA material changed).
//
// When the CA cannot issue one (its signing certificate expired: a Vault
// intermediate not renewed in time), the last one is presented until the
// material changes. It has expired too, since it never outlives its
// issuer, so clients refuse it, but with an error that says so
// ("x509: certificate has expired ..."), where a failed GetCertificate
// would give them only a TLS internal_error alert.
type ServingCert struct {
	Authority ServingIssuer
	Options   ca.ServingOptions
	Clock     ca.Clock
	Log       *slog.Logger // nil: no log

	mu     sync.Mutex
	cert   *tls.Certificate
	from   *ca.Material
	failed *ca.Material // the material the last issuance failed with
}

// GetCertificate implements tls.Config.GetCertificate.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.Current()
}

// Current returns a fresh serving certificate.
func (s *ServingCert) Current() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	m := s.Authority.Material()
	if s.cert != nil && s.from == m {
		l := s.cert.Leaf
		if now.Before(l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2)) {
			return s.cert, nil
		}
	}
	if s.cert != nil && s.failed != nil && s.failed == m {
		// Not again with the same material: it cannot sign (expired)
		// until it is replaced.
		return s.cert, nil
	}
	c, err := s.Authority.IssueServing(s.Options)
	if err != nil {
		if s.cert == nil {
			return nil, err
		}
		s.failed = m
		if s.Log != nil {
			s.Log.Error("the CA cannot issue its own serving certificate: presenting the last one, which clients refuse once it has expired, until the CA can sign again",
				"error", err.Error(), "servingNotAfter", s.cert.Leaf.NotAfter.UTC())
		}
		return s.cert, nil
	}
	if s.failed != nil && s.Log != nil {
		s.Log.Info("the CA issued its serving certificate again", "notAfter", c.Leaf.NotAfter.UTC())
	}
	s.cert, s.from, s.failed = c, m, nil
	return c, nil
}

func (s *ServingCert) now() time.Time { return clockOf(s.Clock).Now() }
