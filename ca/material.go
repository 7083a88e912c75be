package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// File names of CA material, as Istio's `cacerts` and `istio-ca-secret`
// Secrets and warden's data directory spell them.
const (
	FileCACert    = "ca-cert.pem"    // the signing CA certificate
	FileCAKey     = "ca-key.pem"     // its private key
	FileCertChain = "cert-chain.pem" // signing cert, intermediates, root
	FileRootCert  = "root-cert.pem"  // the trust anchors
)

// Material is a signing CA: its certificate and key, the intermediates
// between it and the roots, and the roots themselves.
type Material struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate // intermediates above Cert, leaf-most first; no roots
	Roots []*x509.Certificate // trust anchors; Cert itself when self-signed
}

// Files is Material in the PEM layout of Istio's `cacerts` Secret.
type Files struct {
	CACert    []byte // ca-cert.pem
	CAKey     []byte // ca-key.pem
	CertChain []byte // cert-chain.pem: CACert, then intermediates, then the root
	RootCert  []byte // root-cert.pem: one or more roots
}

// Encode renders m in the cacerts layout.
func (m *Material) Encode() (Files, error) {
	key, err := MarshalKey(m.Key)
	if err != nil {
		return Files{}, err
	}
	chain := append([]*x509.Certificate{m.Cert}, m.Chain...)
	if !m.selfSigned() {
		chain = append(chain, m.Roots[0])
	}
	return Files{
		CACert:    EncodeCerts(m.Cert),
		CAKey:     key,
		CertChain: EncodeCerts(chain...),
		RootCert:  EncodeCerts(m.Roots...),
	}, nil
}

func (m *Material) selfSigned() bool {
	return len(m.Roots) > 0 && m.Roots[0].Equal(m.Cert)
}

// DecodeMaterial parses and validates CA material in the cacerts layout at
// time now. Every error names the file at fault. CertChain may start with
// the CA certificate and may end with the root; both are tolerated since
// operators build the file either way.
func DecodeMaterial(f Files, now time.Time) (*Material, error) {
	cert, err := parseOneCert(f.CACert)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", FileCACert, err)
	}
	key, err := ParseKey(f.CAKey)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", FileCAKey, err)
	}
	roots, err := ParseCerts(f.RootCert)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", FileRootCert, err)
	}
	var chain []*x509.Certificate
	if len(bytes.TrimSpace(f.CertChain)) > 0 {
		if chain, err = ParseCerts(f.CertChain); err != nil {
			return nil, fmt.Errorf("ca: %s: %w", FileCertChain, err)
		}
	}
	if len(chain) > 0 && chain[0].Equal(cert) {
		chain = chain[1:]
	}
	for len(chain) > 0 && containsCert(roots, chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	m := &Material{Cert: cert, Key: key, Chain: chain, Roots: roots}
	if err := m.Validate(now); err != nil {
		return nil, err
	}
	return m, nil
}

// Validate checks that m can sign: the key matches the certificate, the
// certificate is a CA allowed to sign certificates, every root is a
// self-signed CA, and the certificate chains to a root at time now.
func (m *Material) Validate(now time.Time) error {
	if m.Cert == nil || m.Key == nil || len(m.Roots) == 0 {
		return errors.New("ca: incomplete CA material: need a certificate, a key and at least one root")
	}
	if !publicKeysEqual(m.Key.Public(), m.Cert.PublicKey) {
		return fmt.Errorf("ca: %s does not match the public key in %s", FileCAKey, FileCACert)
	}
	if !m.Cert.BasicConstraintsValid || !m.Cert.IsCA {
		return fmt.Errorf("ca: %s (%s) is not a CA certificate (basicConstraints CA:TRUE missing)", FileCACert, m.Cert.Subject)
	}
	if m.Cert.KeyUsage != 0 && m.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("ca: %s (%s) lacks the keyCertSign key usage", FileCACert, m.Cert.Subject)
	}
	roots := x509.NewCertPool()
	for i, r := range m.Roots {
		if !r.IsCA || r.CheckSignatureFrom(r) != nil {
			return fmt.Errorf("ca: %s: certificate %d (%s) is not a self-signed CA", FileRootCert, i+1, r.Subject)
		}
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range m.Chain {
		inter.AddCert(c)
	}
	_, err := m.Cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("ca: %s does not chain to %s through %s: %w", FileCACert, FileRootCert, FileCertChain, err)
	}
	return nil
}

// NotAfter is the earliest expiry along the signing chain; no leaf may
// outlive it.
func (m *Material) NotAfter() time.Time {
	t := m.Cert.NotAfter
	for _, c := range m.Chain {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// ParseCerts decodes one or more PEM certificates; non-certificate blocks
// and trailing garbage are errors.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, expected CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		if len(certs) == 0 {
			return nil, errors.New("no PEM certificate found (file truncated or not PEM)")
		}
		return nil, fmt.Errorf("unexpected data after certificate %d (truncated PEM?)", len(certs))
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

func parseOneCert(data []byte) (*x509.Certificate, error) {
	certs, err := ParseCerts(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("found %d certificates, expected exactly 1", len(certs))
	}
	return certs[0], nil
}

// EncodeCerts renders certificates as concatenated PEM blocks.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func containsCert(set []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// ParseChain parses PEM elements (as in Issued.Chain or a CA response's
// cert_chain) into one certificate list, in order.
func ParseChain(pems [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i, p := range pems {
		cs, err := ParseCerts(p)
		if err != nil {
			return nil, fmt.Errorf("chain element %d: %w", i, err)
		}
		out = append(out, cs...)
	}
	return out, nil
}

// Anchor is the root of m.Roots that m's chain ends at.
func (m *Material) Anchor() (*x509.Certificate, error) { return anchorOf(m) }
