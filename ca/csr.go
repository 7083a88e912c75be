package ca

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
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
	// Reserved are names no workload may get: the CA's own serving names
	// and addresses, so no workload can pose as the CA. localhost,
	// loopback addresses and wildcard names are always refused.
	Reserved []string
}

// maxSANs bounds the SANs of one request, and maxEcho how many of them an
// error repeats: a refusal must not become a 94 KB log line.
const (
	maxSANs = 100
	maxEcho = 5
)

// echo lists at most maxEcho values.
func echo(vs []string) string {
	if len(vs) <= maxEcho {
		return strings.Join(vs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(vs[:maxEcho], ", "), len(vs)-maxEcho)
}

// reserved reports whether name (a DNS name or an address) is one the CA
// keeps for itself.
func (p CSRPolicy) reserved(name string) bool {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "localhost" || strings.HasSuffix(n, ".localhost") {
		return true
	}
	if ip := net.ParseIP(n); ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		return true
	}
	for _, r := range p.Reserved {
		if strings.EqualFold(strings.TrimSuffix(r, "."), n) {
			return true
		}
		if ip, rip := net.ParseIP(n), net.ParseIP(r); ip != nil && rip != nil && ip.Equal(rip) {
			return true
		}
	}
	return false
}

// ParseCSR decodes a PEM certificate request (type "CERTIFICATE REQUEST" or
// "NEW CERTIFICATE REQUEST"). It does not check the signature: the signer
// does that exactly once, on the hot path. Errors wrap ErrInvalidCSR.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	der, err := csrDER(data)
	if err != nil {
		return nil, err
	}
	return parseCSRDER(der)
}

// csrDER is the DER of a PEM certificate request.
func csrDER(data []byte) ([]byte, error) {
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
	return block.Bytes, nil
}

func parseCSRDER(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("ca: %w: malformed DER: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

// check applies the policy to a parsed CSR for caller id. It returns the
// extra SANs (as cfssl host strings) that the policy lets through.
func (p CSRPolicy) check(csr *x509.CertificateRequest, id spiffeid.ID) ([]string, error) {
	if err := p.checkKey(csr); err != nil {
		return nil, err
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
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > maxSANs {
		return nil, fmt.Errorf("ca: %w: %d SANs; at most %d are allowed", ErrInvalidCSR, n, maxSANs)
	}
	var hosts []string
	if len(csr.DNSNames) > 0 {
		if !p.AllowDNSNames {
			return nil, fmt.Errorf("ca: %w: DNS SANs are not allowed (got %s)", ErrInvalidCSR, echo(csr.DNSNames))
		}
		for _, d := range csr.DNSNames {
			switch {
			case net.ParseIP(d) != nil && !p.AllowIPAddresses:
				// The signer would turn it into an IP SAN.
				return nil, fmt.Errorf("ca: %w: DNS SAN %q is an IP address, and IP SANs are not allowed", ErrInvalidCSR, d)
			case strings.HasPrefix(d, "*"):
				return nil, fmt.Errorf("ca: %w: DNS SAN %q: wildcard names are not issued to workloads", ErrInvalidCSR, d)
			case p.reserved(d):
				return nil, fmt.Errorf("ca: %w: DNS SAN %q is one of the CA's own names", ErrIdentityMismatch, d)
			}
			if net.ParseIP(d) == nil {
				if err := checkDNSName(d); err != nil {
					return nil, fmt.Errorf("ca: %w: DNS SAN %q: %v", ErrInvalidCSR, d, err)
				}
			}
		}
		hosts = append(hosts, csr.DNSNames...)
	}
	if len(csr.IPAddresses) > 0 {
		var ips []string
		for _, ip := range csr.IPAddresses {
			ips = append(ips, ip.String())
		}
		if !p.AllowIPAddresses {
			return nil, fmt.Errorf("ca: %w: IP SANs are not allowed (got %s)", ErrInvalidCSR, echo(ips))
		}
		for _, ip := range ips {
			if p.reserved(ip) {
				return nil, fmt.Errorf("ca: %w: IP SAN %s is one of the CA's own addresses", ErrIdentityMismatch, ip)
			}
		}
		hosts = append(hosts, ips...)
	}
	if len(csr.EmailAddresses) > 0 {
		if !p.AllowEmailAddresses {
			return nil, fmt.Errorf("ca: %w: email SANs are not allowed (got %s)", ErrInvalidCSR, echo(csr.EmailAddresses))
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

// checkKey applies the policy's key rules alone, to a request whose
// names are ignored (SignRequest.StubCSR).
func (p CSRPolicy) checkKey(csr *x509.CertificateRequest) error {
	minRSA := p.MinRSABits
	if minRSA == 0 {
		minRSA = DefaultMinRSABits
	}
	if err := checkPublicKey(csr.PublicKey, minRSA); err != nil {
		return fmt.Errorf("ca: %w: %w", ErrInvalidCSR, err)
	}
	return nil
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
