package server_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/token"
)

var (
	idX = catest.ID("a", "x")
	idY = catest.ID("b", "y")
	saX = token.ServiceAccount{Namespace: "a", Name: "x"}
)

// fixture is a CA served over real gRPC and TLS on loopback.
type fixture struct {
	clock     *catest.Clock
	authority *ca.Authority
	issuer    *token.Issuer
	tokKey    crypto.Signer
	addr      string
	roots     *x509.CertPool
	limiter   *server.Limiter
}

type fixtureOpt func(*fixtureCfg)

type fixtureCfg struct {
	signer   server.Signer // defaults to the authority
	material *ca.Material
	limits   server.LimitConfig
}

func withLimits(l server.LimitConfig) fixtureOpt { return func(c *fixtureCfg) { c.limits = l } }

func newFixture(t *testing.T, opts ...fixtureOpt) *fixture { return newBenchFixture(t, opts...) }

func newBenchFixture(t testing.TB, opts ...fixtureOpt) *fixture {
	t.Helper()
	clock := catest.NewClock(time.Now())
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	cfg := fixtureCfg{material: root, limits: server.DefaultLimits()}
	for _, o := range opts {
		o(&cfg)
	}
	a := catest.Authority(t, cfg.material, catest.WithClock(clock), func(c *ca.Config) { c.MaxTTL = 48 * time.Hour })
	if cfg.signer == nil {
		cfg.signer = a
	}
	tokKey := catest.Key(t, ca.ECDSAP256)
	issuer, err := token.NewIssuer("warden", tokKey, clock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		Signer: cfg.signer,
		Authenticators: []server.Authenticator{
			&server.SVIDAuthenticator{Bundle: cfg.signer.Bundle, Clock: clock},
			&server.JWTAuthenticator{TrustDomain: catest.TrustDomain, Clock: clock,
				Verifier: &token.Verifier{Issuer: "warden", Keys: issuer.KeySet(), Clock: clock}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	serving := &server.ServingCert{Authority: a, Clock: clock, Options: ca.ServingOptions{
		ID: catest.ID("warden-system", "warden"), DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
	}}
	limiter := server.NewLimiter(cfg.limits)
	g := grpc.NewServer(append(limiter.ServerOptions(), server.Credentials(serving))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(limiter.Listen(lis)) }()
	t.Cleanup(g.Stop)
	roots := x509.NewCertPool()
	roots.AddCert(a.Material().Roots[0])
	return &fixture{clock: clock, authority: a, issuer: issuer, tokKey: tokKey, addr: lis.Addr().String(), roots: roots, limiter: limiter}
}

func (f *fixture) client(t *testing.T, cert *tls.Certificate) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: f.addr, Roots: f.roots, ClientCert: cert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) token(t *testing.T, sa token.ServiceAccount, aud ...string) string {
	t.Helper()
	tok, err := f.issuer.Mint(sa, aud, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// wantStatus checks the gRPC code and that the message contains msg.
func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("err = %v\nwant code %s with message containing %q", err, code, msg)
	}
}

func TestTokenGetsExactlyItsIdentity(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(t, nil)
	tok := f.token(t, saX)
	for _, asked := range []spiffeid.ID{{}, idX} {
		res, err := c.Request(ctx(t), client.Request{Token: tok, ID: asked})
		if err != nil {
			t.Fatal(err)
		}
		if res.ID != idX {
			t.Fatalf("issued %s, want %s", res.ID, idX)
		}
		if _, _, err := x509svid.Verify(res.Certs, f.authority.Bundle()); err != nil {
			t.Fatal(err)
		}
		if len(res.Roots) != 1 || !res.Roots[0].Equal(f.authority.Material().Roots[0]) {
			t.Fatal("the last element of cert_chain is not the root")
		}
	}
	// The same token asking for another identity.
	_, err := c.Request(ctx(t), client.Request{Token: tok, ID: idY})
	wantStatus(t, err, codes.PermissionDenied, "CSR names spiffe://cluster.local/ns/b/sa/y but the caller is spiffe://cluster.local/ns/a/sa/x")
}

func TestUnauthenticated(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(t, nil)
	past, _ := token.NewIssuer("warden", f.tokKey, catest.NewClock(time.Now().Add(-3*time.Hour)))
	expired, _ := past.Mint(saX, nil, time.Hour)
	otherIss, _ := token.NewIssuer("kubernetes", f.tokKey, f.clock)
	wrongIss, _ := otherIss.Mint(saX, nil, time.Hour)
	cases := []struct{ name, tok, msg string }{
		{"expired", expired, "jwt: token: invalid token: expired at"},
		{"wrong audience", f.token(t, saX, "vault"), "audience [vault] does not include istio-ca"},
		{"wrong issuer", wrongIss, `issuer "kubernetes" is not trusted (want "warden")`},
		{"garbage", "garbage", "malformed: want three dot-separated parts"},
		{"none", "", "no credentials: send authorization: Bearer <token> or a client certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Request(ctx(t), client.Request{Token: tc.tok})
			wantStatus(t, err, codes.Unauthenticated, tc.msg)
		})
	}
}

func TestCachedTokenStillExpires(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(t, nil)
	tok := f.token(t, saX) // valid for one hour
	if _, err := c.Request(ctx(t), client.Request{Token: tok}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(61 * time.Minute)
	_, err := c.Request(ctx(t), client.Request{Token: tok})
	wantStatus(t, err, codes.Unauthenticated, "expired at")
}

func TestInvalidArgument(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.client(t, nil)
	tok := f.token(t, saX)
	key := catest.Key(t, ca.ECDSAP256)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	good := catest.CSR(t, key, nil)
	blk, _ := pem.Decode(good)
	blk.Bytes[len(blk.Bytes)-3] ^= 1
	badSig := pem.EncodeToMemory(blk)
	cases := []struct {
		name string
		csr  []byte
		ttl  time.Duration
		msg  string
	}{
		{"TTL over max", good, 49 * time.Hour, "ca: invalid TTL: requested 49h0m0s exceeds the maximum 48h0m0s"},
		{"malformed CSR", []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 0, "ca: invalid CSR: malformed DER"},
		{"RSA 1024", catest.CSR(t, rsa1024, nil), 0, "ca: invalid CSR: RSA key of 1024 bits is too small (minimum 2048)"},
		{"bad signature", badSig, 0, "ca: invalid CSR: signature does not verify with the CSR's public key"},
		{"not a CSR", []byte("hello"), 0, "ca: invalid CSR: no PEM block found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateCertificate(ctx(t), tc.csr, tc.ttl, tok)
			wantStatus(t, err, codes.InvalidArgument, tc.msg)
		})
	}
}

func TestRenewalOverMTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	first, err := f.client(t, nil).Request(ctx(t), client.Request{Token: f.token(t, saX), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	mtls := f.client(t, first.TLSCertificate())
	renewed, err := mtls.Request(ctx(t), client.Request{}) // no token: the SVID authenticates
	if err != nil {
		t.Fatal(err)
	}
	if renewed.ID != idX || renewed.Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatalf("renewal gave %s serial %x", renewed.ID, renewed.Certs[0].SerialNumber)
	}
	// The SVID for X cannot renew into Y.
	_, err = mtls.Request(ctx(t), client.Request{ID: idY})
	wantStatus(t, err, codes.PermissionDenied, "but the caller is spiffe://cluster.local/ns/a/sa/x")

	// Once the SVID has expired it no longer authenticates.
	f.clock.Add(2 * time.Hour)
	_, err = f.client(t, first.TLSCertificate()).Request(ctx(t), client.Request{})
	wantStatus(t, err, codes.Unauthenticated, "mtls: client certificate: x509svid: could not verify leaf certificate: x509: certificate has expired or is not yet valid")
}

func TestForeignSVIDRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	other := newFixture(t)
	foreign, err := other.client(t, nil).Request(ctx(t), client.Request{Token: other.token(t, saX)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client(t, foreign.TLSCertificate()).Request(ctx(t), client.Request{})
	wantStatus(t, err, codes.Unauthenticated, "mtls: client certificate: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority")
}

func TestChainOrderWithIntermediate(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(time.Now())
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Clock: clock, TTL: 24 * time.Hour * 30, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *fixtureCfg) { c.material = inter })
	chain, err := f.client(t, nil).CreateCertificate(ctx(t), catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), 0, f.token(t, saX))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 {
		t.Fatalf("cert_chain has %d elements, want leaf, intermediate, root", len(chain))
	}
	for i, want := range []*x509.Certificate{nil, inter.Cert, root.Cert} {
		c, err := ca.ParseCerts([]byte(chain[i]))
		if err != nil || len(c) != 1 {
			t.Fatalf("cert_chain[%d]: %v", i, err)
		}
		if want != nil && !c[0].Equal(want) {
			t.Fatalf("cert_chain[%d] is %s, want %s", i, c[0].Subject, want.Subject)
		}
	}
}

func TestNotReadyIsUnavailable(t *testing.T) {
	t.Parallel()
	empty := catest.Authority(t, nil)
	f := newFixture(t, func(c *fixtureCfg) { c.signer = empty })
	_, err := f.client(t, nil).Request(ctx(t), client.Request{Token: f.token(t, saX)})
	wantStatus(t, err, codes.Unavailable, "ca: CA not ready: no signing material loaded")
}

// TestAnswerCarriesTheWholeBundle: with two roots trusted (a rotation,
// a plugged-in bundle), the last element of the answer holds both, as
// istiod's does (Istio's agent builds ROOTCA from it), and the client
// keeps both.
func TestAnswerCarriesTheWholeBundle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	m := f.authority.Material()
	c := f.client(t, nil)
	// One answer before the change: the encoded bundle the server keeps
	// must follow the change.
	before, err := c.CreateCertificate(ctx(t), catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), 0, f.token(t, saX))
	if err != nil {
		t.Fatal(err)
	}
	if roots, _ := ca.ParseCerts([]byte(before[len(before)-1])); len(roots) != 1 {
		t.Fatalf("before: %d roots in the last element", len(roots))
	}
	next := catest.Root(t, ca.CAOptions{CommonName: "next root"})
	if err := f.authority.Activate(&ca.Material{Cert: m.Cert, Key: m.Key, Chain: m.Chain, Roots: append(append([]*x509.Certificate{}, m.Roots...), next.Cert)}); err != nil {
		t.Fatal(err)
	}
	chain, err := c.CreateCertificate(ctx(t), catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), 0, f.token(t, saX))
	if err != nil {
		t.Fatal(err)
	}
	last, err := ca.ParseCerts([]byte(chain[len(chain)-1]))
	if err != nil || len(last) != 2 || !last[0].Equal(m.Roots[0]) || !last[1].Equal(next.Cert) {
		t.Fatalf("last element: %d certificates, %v; want the signing root then the other", len(last), err)
	}
	res, err := c.Request(ctx(t), client.Request{Token: f.token(t, saX)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Roots) != 2 {
		t.Fatalf("the client kept %d roots", len(res.Roots))
	}
}

// TestImpersonationRefused: with no node account trusted (SelfOnly, the
// default Authorizer), a caller asking for another identity in the
// request metadata, as ztunnel asks, is refused as istiod refuses a
// failed impersonation (Unauthenticated), not answered with its own;
// naming its own identity there is its own request.
func TestImpersonationRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: f.roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := catest.Key(t, ca.ECDSAP256)
	csrFor := func(id spiffeid.ID) string {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	call := func(asked spiffeid.ID) (*pb.IstioCertificateResponse, error) {
		md, _ := structpb.NewStruct(map[string]any{server.ImpersonatedIdentity: asked.String()})
		c := metadata.AppendToOutgoingContext(ctx(t), "authorization", "Bearer "+f.token(t, saX))
		return pb.NewIstioCertificateServiceClient(conn).CreateCertificate(c, &pb.IstioCertificateRequest{Csr: csrFor(asked), ValidityDuration: 3600, Metadata: md})
	}
	_, err = call(idY)
	wantStatus(t, err, codes.Unauthenticated, "request impersonation authentication failure: spiffe://cluster.local/ns/a/sa/x asked for \"spiffe://cluster.local/ns/b/sa/y\"")
	res, err := call(idX)
	if err != nil || len(res.CertChain) < 2 {
		t.Fatalf("asking for its own identity in the metadata: %v", err)
	}
}
