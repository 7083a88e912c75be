// Package client requests workload certificates from a warden (or Istio)
// CA over gRPC: it makes the key and CSR, authenticates with a bearer token
// or the current SVID, and checks what comes back before handing it over.
package client

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/sds"
)

// Config describes how to reach the CA.
type Config struct {
	Addr       string            // host:port
	Roots      *x509.CertPool    // trust anchors for the CA's serving certificate
	ServerName string            // defaults to the host in Addr
	ClientCert *tls.Certificate  // current SVID, for renewal over mTLS
	Options    []grpc.DialOption // extra dial options
	// ServerID is the SPIFFE ID the CA's certificate must carry (the
	// control plane's identity, as Istio's agents check istiod's). A
	// workload certificate that happens to hold the CA's host name is
	// then not taken for the CA. Zero checks the host name only.
	ServerID spiffeid.ID
}

// ControlPlaneID is warden serve's own identity in trust domain td (the
// URI SAN of its serving certificate).
func ControlPlaneID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "ns", "warden-system", "sa", "warden")
}

// Client talks to one CA.
type Client struct {
	addr string
	conn *grpc.ClientConn
	pb   pb.IstioCertificateServiceClient
}

// New opens a connection (lazily, as grpc does) to the CA.
func New(cfg Config) (*Client, error) {
	if cfg.Roots == nil {
		return nil, errors.New("client: Roots are required to verify the CA")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.Roots, ServerName: cfg.ServerName}
	if want := cfg.ServerID; !want.IsZero() {
		// Runs after the chain and host name verified.
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("client: the CA presented no certificate")
			}
			got, err := x509svid.IDFromCert(cs.PeerCertificates[0])
			if err != nil {
				return fmt.Errorf("client: the CA's certificate carries no SPIFFE ID, want %s: %v", want, err)
			}
			if got != want {
				return fmt.Errorf("client: the server at %s is %s, not the control plane %s (a workload certificate holding the CA's name?); set the expected identity if the CA really is another", cfg.Addr, got, want)
			}
			return nil
		}
	}
	if cfg.ClientCert != nil {
		cert := cfg.ClientCert
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, cfg.Options...)
	conn, err := grpc.NewClient(cfg.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", cfg.Addr, err)
	}
	return &Client{addr: cfg.Addr, conn: conn, pb: pb.NewIstioCertificateServiceClient(conn)}, nil
}

// Conn is the client's connection to the CA port, which also serves SDS
// and ADS (an agent follows the trust bundle over it).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// ClientCert is a tls.Certificate for an SVID.
func ClientCert(s *sds.SVID) *tls.Certificate {
	tc := &tls.Certificate{PrivateKey: s.Key, Leaf: s.Certs[0]}
	for _, c := range s.Certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// CreateCertificate is the raw RPC: csr is PEM; token may be empty when
// authenticating with a client certificate.
func (c *Client) CreateCertificate(ctx context.Context, csr []byte, ttl time.Duration, token string) ([]string, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	resp, err := c.pb.CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(csr),
		ValidityDuration: int64(ttl / time.Second),
	})
	if err != nil {
		return nil, c.explain(err)
	}
	return resp.GetCertChain(), nil
}

// explain adds what it means when the CA presents an expired
// certificate: a warden CA's own certificate never outlives its signing
// certificate, and it presents the last one when it cannot issue another
// (ca/server.ServingCert), so the CA cannot sign until it gets a new
// signing certificate. The TLS error alone names no cause. The status
// code (Unavailable) is kept.
func (c *Client) explain(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "x509: certificate has expired or is not yet valid") || !strings.Contains(st.Message(), " is after ") {
		return err
	}
	return status.Errorf(codes.Unavailable, "the CA at %s presents an expired certificate: a warden CA does so when its own signing certificate has expired (an intermediate from Vault not renewed in time), and it issues nothing until it has a new one; its /readyz and log say why: %s", c.addr, st.Message())
}

// Request names what to ask for.
type Request struct {
	KeyType ca.KeyType    // default ECDSAP256
	TTL     time.Duration // 0: the CA's default
	Token   string        // bearer token; empty to use the client certificate
	// ID, when set, is put in the CSR as its URI SAN; the CA refuses it
	// unless it is the caller's own identity.
	ID spiffeid.ID
}

// Result is a verified SVID with its key.
type Result struct {
	ID    spiffeid.ID
	Key   crypto.Signer
	Certs []*x509.Certificate // leaf first, without the root
	Roots []*x509.Certificate // the last element of the CA's answer: the whole trust bundle, as istiod sends it
}

// Request generates a key, sends a CSR, and checks the answer: the chain
// verifies as an X.509 SVID up to a root the CA sent (the CA itself was
// authenticated against Config.Roots by TLS), and the leaf holds our key.
func (c *Client) Request(ctx context.Context, r Request) (*Result, error) {
	key, err := ca.GenerateKey(r.KeyType)
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key, r.ID)
	if err != nil {
		return nil, err
	}
	chain, err := c.CreateCertificate(ctx, csr, r.TTL, r.Token)
	if err != nil {
		return nil, err
	}
	return parseResponse(key, chain)
}

func parseResponse(key crypto.Signer, chain []string) (*Result, error) {
	if len(chain) < 2 {
		return nil, fmt.Errorf("client: CA returned %d certificates, want at least a leaf and a root", len(chain))
	}
	// Leaf and intermediates, then, in the last element, every root of
	// the bundle (istiod sends root-cert.pem whole; so does warden).
	var leafs []*x509.Certificate
	for i, p := range chain[:len(chain)-1] {
		cs, err := ca.ParseCerts([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("client: cert_chain[%d]: %w", i, err)
		}
		leafs = append(leafs, cs...)
	}
	roots, err := ca.ParseCerts([]byte(chain[len(chain)-1]))
	if err != nil {
		return nil, fmt.Errorf("client: cert_chain[%d] (the roots): %w", len(chain)-1, err)
	}
	id, err := x509svid.IDFromCert(leafs[0])
	if err != nil {
		return nil, fmt.Errorf("client: issued certificate: %w", err)
	}
	if _, _, err := x509svid.Verify(leafs, x509bundle.FromX509Authorities(id.TrustDomain(), roots)); err != nil {
		return nil, fmt.Errorf("client: issued chain does not verify: %w", err)
	}
	if pub, ok := leafs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("client: issued certificate is not for the key we sent")
	}
	return &Result{ID: id, Key: key, Certs: leafs, Roots: roots}, nil
}

// TLSCertificate returns r as a tls.Certificate, e.g. for renewal.
func (r *Result) TLSCertificate() *tls.Certificate {
	tc := &tls.Certificate{PrivateKey: r.Key, Leaf: r.Certs[0]}
	for _, c := range r.Certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}
