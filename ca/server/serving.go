package server

import (
	"crypto/tls"
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
type ServingCert struct {
	Authority ServingIssuer
	Options   ca.ServingOptions
	Clock     ca.Clock

	mu   sync.Mutex
	cert *tls.Certificate
	from *ca.Material
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
	c, err := s.Authority.IssueServing(s.Options)
	if err != nil {
		return nil, err
	}
	s.cert, s.from = c, m
	return c, nil
}

func (s *ServingCert) now() time.Time { return clockOf(s.Clock).Now() }
