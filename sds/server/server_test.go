package server_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	caserver "github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/sds/server"
	"github.com/wardenmesh/warden/token"
)

var sleepID = catest.ID("default", "sleep")

type fixture struct {
	clock     *catest.Clock
	authority *ca.Authority
	srv       *server.Server
	conn      *grpc.ClientConn
	issuer    *token.Issuer
}

// newFixture serves SDS on a real Unix socket. identify nil means the
// token-authenticated node-agent mode.
func newFixture(t *testing.T, identify server.Identify, opts ...func(*server.Config)) *fixture {
	t.Helper()
	clock := catest.NewClock(time.Now())
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: clock}), catest.WithClock(clock), func(c *ca.Config) { c.Backdate = time.Second })
	issuer, err := token.NewIssuer("warden", catest.Key(t, ca.ECDSAP256), clock)
	if err != nil {
		t.Fatal(err)
	}
	if identify == nil {
		jwt := &caserver.JWTAuthenticator{TrustDomain: catest.TrustDomain, Clock: clock,
			Verifier: &token.Verifier{Issuer: "warden", Keys: issuer.KeySet(), Clock: clock}}
		identify = server.TokenIdentify(func(ctx context.Context) (spiffeid.ID, error) {
			c, err := caserver.Authenticate(ctx, jwt)
			if err != nil {
				return spiffeid.ID{}, err
			}
			return c.ID, nil
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var srv *server.Server
	cache, err := sds.NewCache(ctx, sds.Config{Fetcher: &sds.LocalFetcher{Authority: a, TTL: time.Hour}, Clock: clock,
		OnUpdate: func(s *sds.SVID) {
			if srv != nil {
				srv.Updated(s)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{Cache: cache, Identify: identify, Roots: func() []*x509.Certificate { return a.Bundle().X509Authorities() }}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err = server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	sock := filepath.Join(t.TempDir(), "sds.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fixture{clock: clock, authority: a, srv: srv, conn: conn, issuer: issuer}
}

// envoy is an SDS client that behaves like Envoy: it names its resources,
// ACKs every response with its version and nonce, and keeps what it got.
type envoy struct {
	t      *testing.T
	stream secretsvc.SecretDiscoveryService_StreamSecretsClient
	names  []string
}

func (f *fixture) envoy(t *testing.T, ctx context.Context, names ...string) (*envoy, error) {
	s, err := secretsvc.NewSecretDiscoveryServiceClient(f.conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	e := &envoy{t: t, stream: s, names: names}
	return e, s.Send(&discovery.DiscoveryRequest{
		Node: &corev3.Node{Id: "sidecar~10.0.0.1~sleep-1.default~default.svc.cluster.local"}, ResourceNames: names, TypeUrl: resource.SecretType,
	})
}

// recv reads one response, ACKs it, and returns its secrets by name.
func (e *envoy) recv() (map[string]*tlsv3.Secret, string, error) {
	resp, err := e.stream.Recv()
	if err != nil {
		return nil, "", err
	}
	if resp.VersionInfo == "" || resp.Nonce == "" {
		e.t.Fatalf("response without version (%q) or nonce (%q)", resp.VersionInfo, resp.Nonce)
	}
	out := map[string]*tlsv3.Secret{}
	for _, r := range resp.Resources {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			e.t.Fatal(err)
		}
		if err := s.ValidateAll(); err != nil {
			e.t.Fatalf("invalid Secret %s: %v", s.Name, err)
		}
		out[s.Name] = &s
	}
	err = e.stream.Send(&discovery.DiscoveryRequest{
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: e.names, TypeUrl: resource.SecretType,
	})
	return out, resp.VersionInfo, err
}

func recvWithin(t *testing.T, e *envoy, d time.Duration) (map[string]*tlsv3.Secret, string) {
	t.Helper()
	type res struct {
		s   map[string]*tlsv3.Secret
		v   string
		err error
	}
	ch := make(chan res, 1)
	go func() { s, v, err := e.recv(); ch <- res{s, v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.s, r.v
	case <-time.After(d):
		t.Fatalf("no push within %s", d)
	}
	return nil, ""
}

// checkSecrets asserts the key matches the chain and the chain verifies
// against ROOTCA with go-spiffe.
func checkSecrets(t *testing.T, now time.Time, def, root *tlsv3.Secret) *x509.Certificate {
	t.Helper()
	tc := def.GetTlsCertificate()
	certs, err := ca.ParseCerts(tc.GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.ParseKey(tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
		t.Fatal("private key does not match the certificate chain")
	}
	roots, err := ca.ParseCerts(root.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(catest.TrustDomain, roots), x509svid.WithTime(now))
	if err != nil || id != sleepID {
		t.Fatalf("chain does not verify against ROOTCA as %s: %v (%s)", sleepID, err, id)
	}
	return certs[0]
}

func TestSotWOverUDSWithRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, server.FixedIdentify(sleepID))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := f.envoy(t, ctx, sds.DefaultName, sds.RootName)
	if err != nil {
		t.Fatal(err)
	}
	got, v1 := recvWithin(t, a, 10*time.Second)
	leaf1 := checkSecrets(t, f.clock.Now(), got[sds.DefaultName], got[sds.RootName])
	b, err := f.envoy(t, ctx, sds.DefaultName, sds.RootName)
	if err != nil {
		t.Fatal(err)
	}
	gotB, _ := recvWithin(t, b, 10*time.Second)
	checkSecrets(t, f.clock.Now(), gotB[sds.DefaultName], gotB[sds.RootName])

	// Past half its lifetime the cache rotates and both streams get the
	// new certificate without asking.
	f.clock.Add(40 * time.Minute)
	for _, e := range []*envoy{a, b} {
		got, v2 := recvWithin(t, e, 10*time.Second)
		if v2 == v1 {
			t.Fatal("push with the same version")
		}
		leaf2 := checkSecrets(t, f.clock.Now(), got[sds.DefaultName], got[sds.RootName])
		if leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 {
			t.Fatal("pushed the old certificate")
		}
	}

	// The bundle gains a second root: every ROOTCA watcher gets both.
	m := f.authority.Material()
	next := catest.Root(t, ca.CAOptions{CommonName: "next root"})
	if err := f.authority.Activate(&ca.Material{Cert: m.Cert, Key: m.Key, Chain: m.Chain, Roots: append(append([]*x509.Certificate{}, m.Roots...), next.Cert)}); err != nil {
		t.Fatal(err)
	}
	f.srv.RootsChanged()
	for _, e := range []*envoy{a, b} {
		got, _ := recvWithin(t, e, 10*time.Second)
		roots, _ := ca.ParseCerts(got[sds.RootName].GetValidationContext().GetTrustedCa().GetInlineBytes())
		if len(roots) != 2 || !roots[1].Equal(next.Cert) {
			t.Fatalf("ROOTCA holds %d roots after the rotation began, want 2", len(roots))
		}
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, server.FixedIdentify(sleepID))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cases := []struct {
		name string
		code codes.Code
		msg  string
	}{
		{"kitten", codes.InvalidArgument, `sds: unknown resource "kitten" (served: "default", "ROOTCA", or the caller's SPIFFE ID)`},
		{"spiffe://cluster.local/ns/default/sa/flaskapp", codes.PermissionDenied, "sds: this stream is authenticated as spiffe://cluster.local/ns/default/sa/sleep and cannot receive spiffe://cluster.local/ns/default/sa/flaskapp"},
	}
	for _, tc := range cases {
		e, err := f.envoy(t, ctx, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = e.recv()
		if st, _ := status.FromError(err); st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("%s: err = %v, want %s %q", tc.name, err, tc.code, tc.msg)
		}
	}
	// The identity's own SPIFFE ID is a valid name.
	e, _ := f.envoy(t, ctx, sleepID.String())
	got, _ := recvWithin(t, e, 10*time.Second)
	if got[sleepID.String()] == nil {
		t.Fatal("no secret under the caller's own SPIFFE ID")
	}
}

func TestFetchAndDelta(t *testing.T) {
	t.Parallel()
	f := newFixture(t, server.FixedIdentify(sleepID))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := secretsvc.NewSecretDiscoveryServiceClient(f.conn)
	resp, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "x"}, ResourceNames: []string{sds.DefaultName, sds.RootName}, TypeUrl: resource.SecretType})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 2 || resp.VersionInfo == "" {
		t.Fatalf("fetch returned %d resources, version %q", len(resp.Resources), resp.VersionInfo)
	}
	d, err := c.DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "x"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{sds.DefaultName, sds.RootName}}); err != nil {
		t.Fatal(err)
	}
	dr, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range dr.Resources {
		names[r.Name] = r.Version != ""
	}
	if !names[sds.DefaultName] || !names[sds.RootName] || dr.Nonce == "" {
		t.Fatalf("delta response: %v nonce %q", names, dr.Nonce)
	}
	// ACK, then a rotation arrives as a delta update of default.
	if err := d.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: dr.Nonce}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(40 * time.Minute)
	ch := make(chan *discovery.DeltaDiscoveryResponse, 1)
	go func() { r, _ := d.Recv(); ch <- r }()
	select {
	case r := <-ch:
		if r == nil || len(r.Resources) == 0 {
			t.Fatalf("empty delta push: %v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no delta push after rotation")
	}
}

func TestNodeAgentTokens(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	mint := func(ns, sa string) string {
		tok, err := f.issuer.Mint(token.ServiceAccount{Namespace: ns, Name: sa}, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	base, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	withToken := func(key, tok string) context.Context {
		return metadata.AppendToOutgoingContext(base, key, tok)
	}
	for _, who := range []struct{ ns, sa, header string }{{"default", "sleep", "authorization"}, {"default", "flaskapp", "istio_sds_credentail_header-bin"}} {
		tok := mint(who.ns, who.sa)
		if who.header == "authorization" {
			tok = "Bearer " + tok
		}
		e, err := f.envoy(t, withToken(who.header, tok), sds.DefaultName)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := recvWithin(t, e, 10*time.Second)
		certs, _ := ca.ParseCerts(got[sds.DefaultName].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if want := "spiffe://cluster.local/ns/" + who.ns + "/sa/" + who.sa; certs[0].URIs[0].String() != want {
			t.Fatalf("caller %s/%s got %s", who.ns, who.sa, certs[0].URIs[0])
		}
	}
	// No token.
	e, _ := f.envoy(t, base, sds.DefaultName)
	_, _, err := e.recv()
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "sds: no credentials") {
		t.Fatalf("no token: %v", err)
	}
	// Token for sleep asking for flaskapp's certificate.
	e, _ = f.envoy(t, withToken("authorization", "Bearer "+mint("default", "sleep")), "spiffe://cluster.local/ns/default/sa/flaskapp")
	_, _, err = e.recv()
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied {
		t.Fatalf("cross-identity request: %v", err)
	}
	// A bad token.
	e, _ = f.envoy(t, withToken("authorization", "Bearer nope"), sds.DefaultName)
	_, _, err = e.recv()
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "malformed") {
		t.Fatalf("bad token: %v", err)
	}
	// The scheme is case-insensitive (RFC 6750, RFC 9110 §11.1).
	e, _ = f.envoy(t, withToken("authorization", "bearer "+mint("default", "sleep")), sds.DefaultName)
	if got, _ := recvWithin(t, e, 10*time.Second); got[sds.DefaultName] == nil {
		t.Fatal("lowercase bearer: no certificate")
	}
	// Credentials that are not one bearer token are refused before any
	// authenticator runs, with the fix named.
	sleep := mint("default", "sleep")
	for _, md := range [][]string{
		{"authorization", "Basic x"},
		{"authorization", "Bearer " + sleep + " " + sleep},
		{"authorization", sleep},
		{"istio_sds_credentail_header-bin", "Bearer " + sleep},
		{"istio_sds_credentail_header-bin", ""},
		{"authorization", "Bearer " + sleep, "istio_sds_credentail_header-bin", sleep},
	} {
		e, _ = f.envoy(t, metadata.AppendToOutgoingContext(base, md...), sds.DefaultName)
		_, _, err = e.recv()
		if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.HasSuffix(st.Message(), ": send the workload's token as authorization: Bearer <token>") {
			t.Errorf("%q: %v", md, err)
		}
	}
}

// A NACK is logged with its detail and does not make the server resend
// the rejected version.
func TestNACKDoesNotLoop(t *testing.T) {
	t.Parallel()
	f := newFixture(t, server.FixedIdentify(sleepID))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := secretsvc.NewSecretDiscoveryServiceClient(f.conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{sds.DefaultName}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "n"}, ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// NACK: the previous accepted version (none) and the nonce, with an error.
	if err := s.Send(&discovery.DiscoveryRequest{ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: resource.SecretType,
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "bad certificate chain"}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *discovery.DiscoveryResponse, 1)
	go func() {
		r, err := s.Recv()
		if err == nil {
			got <- r
		}
	}()
	select {
	case r := <-got:
		if r.VersionInfo == resp.VersionInfo {
			t.Fatalf("the NACKed version %s was sent again", r.VersionInfo)
		}
	case <-time.After(500 * time.Millisecond):
	}
	// A real change is still pushed after the NACK.
	f.clock.Add(40 * time.Minute)
	select {
	case r := <-got:
		if r.VersionInfo == resp.VersionInfo {
			t.Fatal("push repeated the NACKed version")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no push after a NACK and a rotation")
	}
}

// TestInUseFollowsStreams: an identity is in use while one of its streams
// is open; when the last closes its snapshot (which holds the key) is
// cleared, and a new stream is served afresh.
func TestInUseFollowsStreams(t *testing.T) {
	f := newFixture(t, server.FixedIdentify(sleepID))
	open := func() (*envoy, context.CancelFunc) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		e, err := f.envoy(t, ctx, sds.DefaultName)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if got, _, err := e.recv(); err != nil || got[sds.DefaultName] == nil {
			cancel()
			t.Fatalf("no default secret: %v %v", got, err)
		}
		return e, cancel
	}
	inUse := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for f.srv.InUse(sleepID) != want {
			if time.Now().After(deadline) {
				t.Fatalf("InUse = %v, want %v", !want, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if f.srv.InUse(sleepID) {
		t.Fatal("in use before any stream")
	}
	_, closeA := open()
	_, closeB := open()
	inUse(true)
	closeA()
	time.Sleep(50 * time.Millisecond)
	inUse(true) // B still open
	closeB()
	inUse(false)
	_, closeC := open() // the cleared snapshot is published again
	defer closeC()
	inUse(true)
}

// TestIdentifyErrorsKeepTheirCode: a fetch and a stream whose Identify
// fails with a gRPC status (the node agent's CA is down: Unavailable) get
// that status, not Unauthenticated; a plain error is Unauthenticated,
// prefixed once.
func TestIdentifyErrorsKeepTheirCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{status.Error(codes.Unavailable, "sds: CA: connection refused"), codes.Unavailable, "sds: CA: connection refused"},
		{errors.New("bad token"), codes.Unauthenticated, "sds: bad token"},
	} {
		f := newFixture(t, func(context.Context) (spiffeid.ID, error) { return spiffeid.ID{}, tc.err })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := secretsvc.NewSecretDiscoveryServiceClient(f.conn)
		_, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "x"}, ResourceNames: []string{sds.DefaultName}, TypeUrl: resource.SecretType})
		if st := status.Convert(err); st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("fetch: %v, want %v %q", err, tc.code, tc.msg)
		}
		s, err := c.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		if st := status.Convert(err); st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("stream: %v, want %v %q", err, tc.code, tc.msg)
		}
	}
}

// TestBundleStreamsAndMissing: a stream asking for ROOTCA alone gets the
// bundle without a certificate being issued; when a root is added, Missing
// names every stream until it has ACKed a bundle holding it (a stream that
// never ACKs stays missing), and a bundle stream cannot then ask for a
// certificate.
func TestBundleStreamsAndMissing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, server.FixedIdentify(sleepID))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bundle, err := f.envoy(t, ctx, sds.RootName)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := recvWithin(t, bundle, 10*time.Second)
	if _, ok := got[sds.DefaultName]; ok || got[sds.RootName] == nil || len(got) != 1 {
		t.Fatalf("a bundle stream got %d secrets", len(got))
	}
	if f.srv.InUse(sleepID) {
		t.Fatal("a bundle stream counts as a certificate stream")
	}
	certs, err := f.envoy(t, ctx, sds.DefaultName, sds.RootName)
	if err != nil {
		t.Fatal(err)
	}
	recvWithin(t, certs, 10*time.Second)
	// A stream that receives but never ACKs.
	mute, err := f.envoy(t, ctx, sds.RootName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mute.stream.Recv(); err != nil {
		t.Fatal(err)
	}

	next := catest.Root(t, ca.CAOptions{CommonName: "next root"})
	fp := ca.Fingerprint(next.Cert)
	if total, missing := f.srv.Missing(fp); total != 3 || len(missing) != 3 {
		t.Fatalf("before the new root: %d streams, missing %v", total, missing)
	}
	m := f.authority.Material()
	if err := f.authority.Activate(&ca.Material{Cert: m.Cert, Key: m.Key, Chain: m.Chain, Roots: append(append([]*x509.Certificate{}, m.Roots...), next.Cert)}); err != nil {
		t.Fatal(err)
	}
	f.srv.RootsChanged()
	for _, e := range []*envoy{bundle, certs} {
		got, _ := recvWithin(t, e, 10*time.Second)
		if roots, _ := ca.ParseCerts(got[sds.RootName].GetValidationContext().GetTrustedCa().GetInlineBytes()); len(roots) != 2 {
			t.Fatalf("ROOTCA holds %d roots", len(roots))
		}
	}
	var missing []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, missing = f.srv.Missing(fp); len(missing) == 1 {
			break
		}
	}
	if len(missing) != 1 || !strings.Contains(missing[0], sleepID.String()) {
		t.Fatalf("missing %v, want only the stream that never ACKs", missing)
	}

	if err := bundle.stream.Send(&discovery.DiscoveryRequest{ResourceNames: []string{sds.DefaultName}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a bundle stream asking for a certificate: %v", err)
	}
}
