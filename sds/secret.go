// Package sds turns workload identities into Envoy Secret resources and
// keeps them fresh: a per-identity cache that rotates each SVID when half
// its lifetime has passed (with a little jitter), never hands out an
// expired one, and retries a failing CA with capped exponential backoff
// while the current SVID is still valid. The gRPC server lives in
// sds/server.
package sds

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// Resource names Envoy asks for, as Istio's agent serves them.
const (
	DefaultName = "default" // tls_certificate: the workload's chain and key
	RootName    = "ROOTCA"  // validation_context: the trust bundle
)

// SVID is a workload identity with its key.
type SVID struct {
	ID    spiffeid.ID
	Certs []*x509.Certificate // leaf first, then intermediates; no root
	Key   crypto.Signer
	Roots []*x509.Certificate // the trust bundle it was issued under
	// Fetched is when the cache received it; rotation is scheduled from
	// here, not from NotBefore, which the CA backdates for clock skew.
	Fetched time.Time
}

// ChainPEM is the certificate chain as PEM.
func (s *SVID) ChainPEM() []byte { return ca.EncodeCerts(s.Certs...) }

// TLSCertificate builds the Secret `name` holding s's chain and key.
func TLSCertificate(name string, s *SVID) (*tlsv3.Secret, error) {
	if s == nil || len(s.Certs) == 0 || s.Key == nil {
		return nil, errors.New("sds: incomplete SVID")
	}
	key, err := ca.MarshalKey(s.Key)
	if err != nil {
		return nil, err
	}
	sec := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: s.ChainPEM()}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: key}},
		}},
	}
	if err := sec.ValidateAll(); err != nil {
		return nil, fmt.Errorf("sds: %s: %w", name, err)
	}
	return sec, nil
}

// ValidationContext builds the Secret `name` trusting roots (all of them:
// during a root rotation the bundle holds old and new).
func ValidationContext(name string, roots []*x509.Certificate) (*tlsv3.Secret, error) {
	if len(roots) == 0 {
		return nil, errors.New("sds: empty trust bundle")
	}
	sec := &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca.EncodeCerts(roots...)}},
		}},
	}
	if err := sec.ValidateAll(); err != nil {
		return nil, fmt.Errorf("sds: %s: %w", name, err)
	}
	return sec, nil
}

// ProxySecrets are the secrets a proxy fetches over ADS for its identity:
// "default" (its SVID, fetched or renewed through the cache) and "ROOTCA"
// (the trust bundle roots returns now).
func ProxySecrets(cache *Cache, roots func() []*x509.Certificate) func(ctx context.Context, id spiffeid.ID) ([]types.Resource, error) {
	return func(ctx context.Context, id spiffeid.ID) ([]types.Resource, error) {
		svid, err := cache.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		def, err := TLSCertificate(DefaultName, svid)
		if err != nil {
			return nil, err
		}
		root, err := ValidationContext(RootName, roots())
		if err != nil {
			return nil, err
		}
		return []types.Resource{def, root}, nil
	}
}
