package authn

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLS is the Go counterpart of the DownstreamTlsContext Compile
// emits, for servers warden configures without Envoy (tests, proxyless
// workloads): the certificate comes from getCert, and a client certificate
// is required, must verify against roots, and must carry a SPIFFE ID in
// the trust domain.
func (ix *Index) ServerTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), roots func() []*x509.Certificate, now func() time.Time) *tls.Config {
	td := ix.opts.TrustDomain
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: getCert,
		ClientAuth:     tls.RequireAnyClientCert,
		NextProtos:     []string{"h2", "http/1.1"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, _, err := x509svid.ParseAndVerify(raw, x509bundle.FromX509Authorities(td, roots()), x509svid.WithTime(now()))
			if err != nil {
				return fmt.Errorf("authn: client certificate: %w", err)
			}
			if id.TrustDomain() != td {
				return fmt.Errorf("authn: client %s is outside trust domain %s", id, td)
			}
			return nil
		},
	}
}

// Listen applies a port's mode to a listener, as Envoy's filter chains do:
// STRICT serves only TLS; DISABLE only plaintext; PERMISSIVE looks at the
// first byte of each connection (a TLS handshake record starts with 0x16,
// as tls_inspector detects) and serves either.
func Listen(inner net.Listener, mode Mode, cfg *tls.Config) (net.Listener, error) {
	switch mode {
	case Strict:
		return tls.NewListener(inner, cfg), nil
	case Disable:
		return inner, nil
	case Permissive:
		return &sniffing{Listener: inner, cfg: cfg}, nil
	}
	return nil, fmt.Errorf("authn: unknown mode %q", mode)
}

type sniffing struct {
	net.Listener
	cfg *tls.Config
}

// peeked is a connection whose first bytes were read for detection.
type peeked struct {
	net.Conn
	r *bufio.Reader
}

func (p *peeked) Read(b []byte) (int, error) { return p.r.Read(b) }

func (s *sniffing) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	first, err := r.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, errors.Join(errors.New("authn: no first byte to detect the protocol"), err)
	}
	pc := &peeked{Conn: c, r: r}
	if first[0] == 0x16 {
		return tls.Server(pc, s.cfg), nil
	}
	return pc, nil
}
