// Package token mints and verifies workload JWTs: Kubernetes-style
// service-account tokens (`sub: system:serviceaccount:<ns>:<sa>`) that
// callers present to the CA as `authorization: Bearer <JWT>`.
//
// In standalone mode warden signs them itself (Issuer) and publishes the
// public keys as a JWKS; Verifier checks any such token offline against a
// JWKS: signature, issuer, audience, expiry and the subject's form.
package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wardenmesh/warden/ca"
)

// DefaultAudience is the audience Istio's CA expects on workload tokens.
const DefaultAudience = "istio-ca"

// Algorithms are the JWS algorithms Verifier accepts. "none" and the HMAC
// family are never accepted.
var Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.RS384, jose.RS512, jose.PS256}

// ServiceAccount is the identity a token asserts.
type ServiceAccount struct {
	Namespace string
	Name      string
}

// Subject renders the Kubernetes username form
// "system:serviceaccount:<ns>:<name>".
func (s ServiceAccount) Subject() string {
	return "system:serviceaccount:" + s.Namespace + ":" + s.Name
}

// ParseSubject parses "system:serviceaccount:<ns>:<name>", checking that the
// namespace is a DNS-1123 label and the name a DNS-1123 subdomain.
func ParseSubject(sub string) (ServiceAccount, error) {
	const prefix = "system:serviceaccount:"
	rest, ok := strings.CutPrefix(sub, prefix)
	if !ok {
		return ServiceAccount{}, fmt.Errorf("token: subject %q is not a service account (want %s<namespace>:<name>)", sub, prefix)
	}
	ns, name, ok := strings.Cut(rest, ":")
	if !ok {
		return ServiceAccount{}, fmt.Errorf("token: subject %q has no service account name", sub)
	}
	if err := CheckNamespace(ns); err != nil {
		return ServiceAccount{}, fmt.Errorf("token: subject %q: %w", sub, err)
	}
	if err := CheckName(name); err != nil {
		return ServiceAccount{}, fmt.Errorf("token: subject %q: %w", sub, err)
	}
	return ServiceAccount{Namespace: ns, Name: name}, nil
}

// CheckNamespace checks a Kubernetes namespace name (DNS-1123 label).
func CheckNamespace(ns string) error {
	if len(ns) == 0 || len(ns) > 63 || !dns1123(ns, false) {
		return fmt.Errorf("namespace %q is not a DNS-1123 label", ns)
	}
	return nil
}

// CheckName checks a Kubernetes service account name (DNS-1123 subdomain).
func CheckName(name string) error {
	if len(name) == 0 || len(name) > 253 || !dns1123(name, true) {
		return fmt.Errorf("service account name %q is not a DNS-1123 subdomain", name)
	}
	return nil
}

func dns1123(s string, dots bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		edge := i == 0 || i == len(s)-1 || dots && (s[i-1] == '.' || s[i+1] == '.')
		switch {
		case alnum:
		case (c == '-' || dots && c == '.') && !edge:
		default:
			return false
		}
	}
	return true
}

// claims are the registered claims warden reads and writes.
type claims struct {
	jwt.Claims
}

// Issuer mints workload tokens with one signing key.
type Issuer struct {
	issuer string
	key    crypto.Signer
	kid    string
	signer jose.Signer
	clock  ca.Clock
}

// NewIssuer makes an issuer named iss signing with key (ECDSA P-256/P-384
// or RSA). clock may be nil.
func NewIssuer(iss string, key crypto.Signer, clock ca.Clock) (*Issuer, error) {
	if iss == "" {
		return nil, errors.New("token: issuer name is required")
	}
	alg, err := algorithmFor(key.Public())
	if err != nil {
		return nil, err
	}
	jwk := jose.JSONWebKey{Key: key.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("token: key thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("token: signer: %w", err)
	}
	if clock == nil {
		clock = ca.SystemClock{}
	}
	return &Issuer{issuer: iss, key: key, kid: kid, signer: s, clock: clock}, nil
}

func algorithmFor(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("token: unsupported signing key %T", pub)
}

// Name is the issuer name put in the iss claim.
func (i *Issuer) Name() string { return i.issuer }

// Mint signs a token for sa, valid for ttl, for the given audiences
// (DefaultAudience when empty).
func (i *Issuer) Mint(sa ServiceAccount, audiences []string, ttl time.Duration) (string, error) {
	if err := CheckNamespace(sa.Namespace); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if err := CheckName(sa.Name); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("token: lifetime %s must be positive", ttl)
	}
	if len(audiences) == 0 {
		audiences = []string{DefaultAudience}
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("token: id: %w", err)
	}
	now := i.clock.Now()
	c := claims{jwt.Claims{
		Issuer:    i.issuer,
		Subject:   sa.Subject(),
		Audience:  audiences,
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		ID:        hex.EncodeToString(jti),
	}}
	tok, err := jwt.Signed(i.signer).Claims(c).Serialize()
	if err != nil {
		return "", fmt.Errorf("token: sign: %w", err)
	}
	return tok, nil
}

// KeySet returns the public JWKS that verifies this issuer's tokens.
func (i *Issuer) KeySet() *jose.JSONWebKeySet {
	alg, _ := algorithmFor(i.key.Public())
	return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: i.key.Public(), KeyID: i.kid, Algorithm: string(alg), Use: "sig",
	}}}
}
