package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Upstream signs warden's intermediate CA certificate: an external PKI
// (Vault) that holds the root. warden generates the intermediate's key
// itself and signs workload certificates locally, so the upstream is asked
// once per intermediate lifetime, never per workload.
type Upstream interface {
	// SignIntermediate has the upstream sign a CA certificate for the
	// public key in req.CSR.
	SignIntermediate(ctx context.Context, req IntermediateRequest) (*UpstreamChain, error)
}

// IntermediateRequest asks an Upstream for a CA certificate.
type IntermediateRequest struct {
	CSR []byte        // PEM certificate request of warden's new intermediate key
	TTL time.Duration // requested lifetime; the upstream may shorten it
}

// UpstreamChain is what an Upstream returns: the signed intermediate, the
// upstream's certificates above it, and the trust anchors.
type UpstreamChain struct {
	Cert  *x509.Certificate   // warden's new intermediate
	Chain []*x509.Certificate // certificates between Cert and the roots, leaf-most first; no roots
	Roots []*x509.Certificate // the upstream's self-signed roots
	// Shortened is set by an upstream that issued Cert for less time than
	// asked: what cut it, naming the setting that would change it (for
	// Vault, the PKI mount's max_lease_ttl). The renewer puts it in what it
	// reports.
	Shortened string
}

var _ Timer = SystemClock{}

// RequestIntermediate generates a key of type kt and a CSR for it with the
// given subject, has up sign it, and assembles the result into Material.
// Roots still valid at now from prev (the material being replaced) stay in
// the trust bundle after the upstream's own, so that leaves issued under an
// old root keep verifying across an upstream root rotation.
func RequestIntermediate(ctx context.Context, up Upstream, kt KeyType, subject pkix.Name, ttl time.Duration, prev *Material, now time.Time) (*Material, error) {
	m, _, err := requestIntermediate(ctx, up, kt, subject, ttl, prev, now)
	return m, err
}

// requestIntermediate is RequestIntermediate that also returns the
// upstream's answer: non-nil whenever the upstream issued a certificate,
// even one then refused.
func requestIntermediate(ctx context.Context, up Upstream, kt KeyType, subject pkix.Name, ttl time.Duration, prev *Material, now time.Time) (*Material, *UpstreamChain, error) {
	key, err := GenerateKey(kt)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: intermediate CSR: %w", err)
	}
	resp, err := up.SignIntermediate(ctx, IntermediateRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), TTL: ttl})
	if err != nil {
		return nil, nil, err
	}
	if resp == nil || resp.Cert == nil || len(resp.Roots) == 0 {
		return nil, nil, errors.New("ca: upstream returned no certificate or no root")
	}
	if !publicKeysEqual(key.Public(), resp.Cert.PublicKey) {
		return nil, resp, errors.New("ca: upstream returned a certificate for another key than the CSR's")
	}
	roots := append([]*x509.Certificate{}, resp.Roots...)
	if prev != nil {
		for _, r := range prev.Roots {
			if !containsCert(roots, r) && now.Before(r.NotAfter) {
				roots = append(roots, r)
			}
		}
	}
	m := &Material{Cert: resp.Cert, Key: key, Chain: resp.Chain, Roots: roots}
	if err := m.Validate(now); err != nil {
		return nil, resp, fmt.Errorf("ca: upstream intermediate: %w", err)
	}
	return m, resp, nil
}
