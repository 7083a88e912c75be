package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
)

// DefaultRootTTL is the lifetime of a generated self-signed root.
const DefaultRootTTL = 10 * 365 * 24 * time.Hour

// CAOptions shape a generated CA certificate.
type CAOptions struct {
	// Organization goes into the subject; typically the trust domain.
	Organization string
	// CommonName goes into the subject.
	CommonName string
	KeyType    KeyType       // default ECDSAP256
	TTL        time.Duration // default DefaultRootTTL
	Clock      Clock         // default the system clock
	// MaxPathLen limits intermediates below this CA; 0 with MaxPathLenZero
	// forbids them. Negative leaves the path length unconstrained.
	MaxPathLen int
}

func (o *CAOptions) fill() {
	if o.KeyType == "" {
		o.KeyType = ECDSAP256
	}
	if o.TTL == 0 {
		o.TTL = DefaultRootTTL
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.CommonName == "" {
		o.CommonName = "warden CA"
	}
}

// NewSelfSigned generates a self-signed root CA with a fresh key.
func NewSelfSigned(opts CAOptions) (*Material, error) {
	opts.fill()
	key, err := GenerateKey(opts.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(opts, key.Public())
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse new root: %w", err)
	}
	return &Material{Cert: cert, Key: key, Roots: []*x509.Certificate{cert}}, nil
}

// NewIntermediate generates an intermediate CA signed by parent. Its
// lifetime is clamped to the parent's chain.
func NewIntermediate(parent *Material, opts CAOptions) (*Material, error) {
	opts.fill()
	key, err := GenerateKey(opts.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(opts, key.Public())
	if err != nil {
		return nil, err
	}
	if na := parent.NotAfter(); tmpl.NotAfter.After(na) {
		tmpl.NotAfter = na
	}
	if tmpl.NotBefore.Before(parent.Cert.NotBefore) {
		tmpl.NotBefore = parent.Cert.NotBefore
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, key.Public(), parent.Key)
	if err != nil {
		return nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse new intermediate: %w", err)
	}
	chain := parent.Chain
	if !parent.selfSigned() {
		chain = append([]*x509.Certificate{parent.Cert}, parent.Chain...)
	}
	return &Material{Cert: cert, Key: key, Chain: chain, Roots: parent.Roots}, nil
}

func caTemplate(opts CAOptions, pub crypto.PublicKey) (*x509.Certificate, error) {
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	now := opts.Clock.Now()
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: nonEmpty(opts.Organization), CommonName: opts.CommonName},
		NotBefore:             now.Add(-DefaultBackdate).UTC(),
		NotAfter:              now.Add(opts.TTL).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski,
	}
	switch {
	case opts.MaxPathLen == 0:
		t.MaxPathLenZero = true
	case opts.MaxPathLen > 0:
		t.MaxPathLen = opts.MaxPathLen
	default:
		t.MaxPathLen = -1
	}
	return t, nil
}

// NewSerial returns a random, positive, non-zero 128-bit serial number.
func NewSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("ca: serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID is the RFC 5280 method 1 key identifier: SHA-1 of the
// subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("ca: parse public key: %w", err)
	}
	sum := sha1.Sum(spki.Key.Bytes)
	return sum[:], nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
