package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultMinRSABits is the smallest RSA key warden signs.
const DefaultMinRSABits = 2048

// CSRPolicy says what a workload CSR may carry besides its public key.
// By default a CSR may name no SANs but the caller's own SPIFFE ID.
type CSRPolicy struct {
	AllowDNSNames       bool // copy DNS SANs from the CSR into the leaf
	AllowIPAddresses    bool // copy IP SANs
	AllowEmailAddresses bool // copy email SANs
	MinRSABits          int  // default DefaultMinRSABits
}

// ParseCSR decodes a PEM certificate request (type "CERTIFICATE REQUEST" or
// "NEW CERTIFICATE REQUEST"). It does not check the signature: the signer
// does that exactly once, on the hot path. Errors wrap ErrInvalidCSR.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil, fmt.Errorf("ca: %w: empty", ErrInvalidCSR)
		}
		return nil, fmt.Errorf("ca: %w: no PEM block found", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("ca: %w: PEM block is %q, expected CERTIFICATE REQUEST", ErrInvalidCSR, block.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("ca: %w: unexpected data after the PEM block", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca: %w: malformed DER: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

// check applies the policy to a parsed CSR for caller id. It returns the
// extra SANs (as cfssl host strings) that the policy lets through.
func (p CSRPolicy) check(csr *x509.CertificateRequest, id spiffeid.ID) ([]string, error) {
	minRSA := p.MinRSABits
	if minRSA == 0 {
		minRSA = DefaultMinRSABits
	}
	if err := checkPublicKey(csr.PublicKey, minRSA); err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrInvalidCSR, err)
	}
	switch len(csr.URIs) {
	case 0:
	case 1:
		if got := csr.URIs[0].String(); got != id.String() {
			return nil, fmt.Errorf("ca: %w: CSR names %s but the caller is %s", ErrIdentityMismatch, got, id)
		}
	default:
		return nil, fmt.Errorf("ca: %w: CSR has %d URI SANs; at most one (the caller's SPIFFE ID) is allowed", ErrIdentityMismatch, len(csr.URIs))
	}
	var hosts []string
	if len(csr.DNSNames) > 0 {
		if !p.AllowDNSNames {
			return nil, fmt.Errorf("ca: %w: DNS SANs are not allowed (got %s)", ErrInvalidCSR, strings.Join(csr.DNSNames, ", "))
		}
		for _, d := range csr.DNSNames {
			if err := checkDNSName(d); err != nil {
				return nil, fmt.Errorf("ca: %w: DNS SAN %q: %v", ErrInvalidCSR, d, err)
			}
		}
		hosts = append(hosts, csr.DNSNames...)
	}
	if len(csr.IPAddresses) > 0 {
		if !p.AllowIPAddresses {
			return nil, fmt.Errorf("ca: %w: IP SANs are not allowed (got %v)", ErrInvalidCSR, csr.IPAddresses)
		}
		for _, ip := range csr.IPAddresses {
			hosts = append(hosts, ip.String())
		}
	}
	if len(csr.EmailAddresses) > 0 {
		if !p.AllowEmailAddresses {
			return nil, fmt.Errorf("ca: %w: email SANs are not allowed (got %s)", ErrInvalidCSR, strings.Join(csr.EmailAddresses, ", "))
		}
		for _, e := range csr.EmailAddresses {
			if !strings.Contains(e, "@") {
				return nil, fmt.Errorf("ca: %w: email SAN %q has no @", ErrInvalidCSR, e)
			}
		}
		hosts = append(hosts, csr.EmailAddresses...)
	}
	return hosts, nil
}

// checkDNSName accepts RFC 1123 host names, optionally with a leading "*."
// wildcard label.
func checkDNSName(name string) error {
	n := strings.TrimPrefix(name, "*.")
	if n == "" || len(n) > 253 {
		return fmt.Errorf("length %d out of range", len(name))
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("empty or over-long label")
		}
		for i, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(label)-1
			if !ok {
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	return nil
}

// NewCSR makes a PEM CSR for key with an empty subject and, when id is
// set, id as its only URI SAN.
func NewCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	tmpl := &x509.CertificateRequest{}
	if !id.IsZero() {
		tmpl.URIs = []*url.URL{id.URL()}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("ca: CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
