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
	// Under, when set, is the root the intermediate must chain to (a
	// RootPicker's choice): an upstream with several issuers signs with
	// the one under it, not with its default. One that cannot signs as
	// without Under and says why in UpstreamChain.NotUnder; it never
	// returns an intermediate under another root without saying so.
	Under *x509.Certificate
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
	// NotUnder is set when the request named a root (Under) and the
	// upstream signed under its default issuer instead: why (the issuer
	// is gone, or refused, naming the permission to grant).
	NotUnder string
}

var _ Timer = SystemClock{}

// RequestIntermediate generates a key of type kt and a CSR for it with the
// given subject, has up sign it, and assembles the result into Material.
// Roots still valid at now from prev (the material being replaced) stay in
// the trust bundle after the upstream's own, so that leaves issued under an
// old root keep verifying across an upstream root rotation.
func RequestIntermediate(ctx context.Context, up Upstream, kt KeyType, subject pkix.Name, ttl time.Duration, prev *Material, now time.Time) (*Material, error) {
	m, _, err := requestIntermediate(ctx, up, IntermediateRequest{TTL: ttl}, kt, subject, prev, now)
	return m, err
}

// requestIntermediate is RequestIntermediate that also returns the
// upstream's answer: non-nil whenever the upstream issued a certificate,
// even one then refused. req gives the TTL and Under; its CSR is made
// here.
func requestIntermediate(ctx context.Context, up Upstream, req IntermediateRequest, kt KeyType, subject pkix.Name, prev *Material, now time.Time) (*Material, *UpstreamChain, error) {
	key, err := GenerateKey(kt)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: intermediate CSR: %w", err)
	}
	req.CSR = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	resp, err := up.SignIntermediate(ctx, req)
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

// IssuerLister is an optional Upstream capability: an upstream that keeps
// several issuers (Vault's PKI mount since 1.11) lists them, so that a
// root rotated inside the upstream is published to every consumer before
// an intermediate chains to it.
type IssuerLister interface {
	Issuers(ctx context.Context) ([]UpstreamIssuer, error)
}

// UpstreamIssuer is one issuer an upstream holds.
type UpstreamIssuer struct {
	ID, Name string // the upstream's names for it (Vault: issuer_id, issuer_name)
	// Root is the self-signed root its chain ends at (the issuer itself
	// for a root issuer).
	Root *x509.Certificate
	// Signs marks the issuer the upstream signs warden's next intermediate
	// with (Vault: the default issuer, or the one the sign path names).
	Signs bool
}

// RootGate is an optional part of a Renewer (RenewerConfig.Gate): it
// activates each intermediate the renewer obtained and proved, with the
// trust bundle it decides, and may hold back one that chains to a root
// the trust bundle's consumers do not hold yet (publish before activate).
type RootGate interface {
	// Admit activates m, whose chain ends at root, or returns an error
	// wrapping ErrHeld to keep the current intermediate signing. force is
	// set when the current intermediate has less than LowLifeFraction of
	// its life left (or there is none): holding m back then would soon
	// leave the CA unable to sign.
	Admit(m *Material, root *x509.Certificate, force bool) error
}

// RootPicker is an optional part of a RootGate: it names the root the
// renewer's next intermediate must chain to (IntermediateRequest.Under),
// so that an upstream that signs under a new root by default (Vault, its
// default issuer switched) still signs under the root the rotation says
// signs, until it is activated.
type RootPicker interface {
	// Under is that root, given the current intermediate (nil at
	// start); nil leaves the choice to the upstream.
	Under(cur *Material) *x509.Certificate
	// NotUnder is told, before Admit, that the upstream signed under its
	// default issuer instead of under the root Under named, and why.
	NotUnder(why string)
}

// ErrHeld marks an intermediate a RootGate held back: not a failure; the
// renewer keeps it and offers it again (Renewer.Kick, its own renewal
// time, or when the current intermediate runs low).
var ErrHeld = errors.New("intermediate held back")
