package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// KeyType names a key algorithm and size warden can generate and accept.
type KeyType string

// The supported key types. ECDSAP256 is the default for CAs and workloads.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists the supported key types in order of preference.
var KeyTypes = []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA4096}

// KeyTypeNames lists the supported key types for people, "ecdsa-p256,
// ecdsa-p384, rsa-2048, rsa-4096": the one list every flag and message
// that takes a key type names.
func KeyTypeNames() string {
	names := make([]string, len(KeyTypes))
	for i, kt := range KeyTypes {
		names[i] = string(kt)
	}
	return strings.Join(names, ", ")
}

// ParseKeyType parses a key type name such as "ecdsa-p256"; empty means the
// default, ECDSAP256.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, kt := range KeyTypes {
		if string(kt) == s {
			return kt, nil
		}
	}
	return "", fmt.Errorf("ca: unknown key type %q (want one of %s)", s, KeyTypeNames())
}

// GenerateKey makes a new private key of type kt from crypto/rand.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("ca: unknown key type %q", kt)
}

// DescribeKey names a public key's algorithm and size, e.g. "ECDSA P-256" or
// "RSA 2048".
func DescribeKey(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// MarshalKey encodes a private key as a PKCS#8 PEM block.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes one PEM private key in PKCS#8, SEC 1 (EC) or PKCS#1 (RSA)
// form. Anything after the first block other than white space is an error,
// so a concatenation mistake is caught rather than half-read.
func ParseKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		if len(data) == 0 {
			return nil, errors.New("empty file, expected a PEM private key")
		}
		return nil, errors.New("no PEM private key found (file truncated or not PEM)")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("unexpected data after the private key")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, expected a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return s, nil
}

// checkPublicKey applies warden's key policy: ECDSA P-256 or P-384, RSA of
// at least minRSABits and at most 8192 bits. Its errors are
// ErrUnsupportedKey.
func checkPublicKey(pub crypto.PublicKey, minRSABits int) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return keyError(fmt.Sprintf("ECDSA curve %s is not allowed (want P-256 or P-384)", k.Curve.Params().Name))
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < minRSABits {
			return keyError(fmt.Sprintf("RSA key of %d bits is too small (minimum %d)", bits, minRSABits))
		}
		if bits > 8192 {
			return keyError(fmt.Sprintf("RSA key of %d bits is too large (maximum 8192)", bits))
		}
		if k.E != 65537 {
			return keyError(fmt.Sprintf("RSA public exponent %d is not allowed (want 65537)", k.E))
		}
		return nil
	}
	return keyError(fmt.Sprintf("key type %s is not allowed (want ECDSA P-256/P-384 or RSA)", DescribeKey(pub)))
}

// keyError is a refused key: ErrUnsupportedKey, saying which key and
// what warden takes instead.
type keyError string

func (e keyError) Error() string      { return string(e) }
func (keyError) Is(target error) bool { return target == ErrUnsupportedKey }
