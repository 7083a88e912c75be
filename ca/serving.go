package ca

import (
	"crypto/tls"
	"encoding/pem"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServingOptions describe a certificate warden issues to itself, for
// its own TLS listeners.
type ServingOptions struct {
	ID       spiffeid.ID
	DNSNames []string
	IPs      []net.IP
	TTL      time.Duration
	KeyType  KeyType
}

// IssueServing generates a key and signs a serving certificate carrying the
// given SPIFFE ID plus DNS and IP SANs.
func (a *Authority) IssueServing(o ServingOptions) (*tls.Certificate, error) {
	key, err := GenerateKey(o.KeyType)
	if err != nil {
		return nil, err
	}
	csr, err := NewCSR(key, spiffeid.ID{})
	if err != nil {
		return nil, err
	}
	hosts := append([]string{}, o.DNSNames...)
	for _, ip := range o.IPs {
		hosts = append(hosts, ip.String())
	}
	iss, err := a.Sign(SignRequest{
		CSR:   csr,
		ID:    o.ID,
		TTL:   o.TTL,
		Hosts: hosts,
	})
	if err != nil {
		return nil, err
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
	for _, p := range iss.Chain[:len(iss.Chain)-1] { // the root is not sent
		b, _ := pem.Decode(p)
		tc.Certificate = append(tc.Certificate, b.Bytes)
	}
	return tc, nil
}
