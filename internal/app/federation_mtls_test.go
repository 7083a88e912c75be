package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// whoami answers every call with the caller's SPIFFE ID, as the server's
// handshake authenticated it.
type whoami struct {
	testgrpc.UnimplementedTestServiceServer
}

func (whoami) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	p, _ := peer.FromContext(ctx)
	id := ""
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 && len(info.State.PeerCertificates[0].URIs) == 1 {
		id = info.State.PeerCertificates[0].URIs[0].String()
	}
	return &testgrpc.SimpleResponse{Hostname: id}, nil
}

// countingListener counts accepted connections: one TLS handshake each.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// grpcServe serves whoami with cfg on loopback.
func grpcServe(t *testing.T, cfg *tls.Config) (string, *countingListener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	testgrpc.RegisterTestServiceServer(s, whoami{})
	go func() { _ = s.Serve(cl) }()
	t.Cleanup(s.Stop)
	return l.Addr().String(), cl
}

// call makes one call on a connection of its own (a new handshake) and
// returns the ID the server saw.
func call(addr string, cfg *tls.Config) (string, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return "", err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := testgrpc.NewTestServiceClient(cc).UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return "", err
	}
	return r.Hostname, nil
}

// agentSVID reads the agent's SDS socket as a workload would: its SVID
// ("default") and, each under its own trust domain, ROOTCA and the
// foreign bundles by name.
func agentSVID(t *testing.T, sock string) (*x509svid.SVID, *x509bundle.Set) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := sdsFirst(ctx, conn, "sidecar~127.0.0.1~sleep.default~default.svc.cluster.local", "default", "ROOTCA", "spiffe://partner.test")
	if err != nil {
		t.Fatal(err)
	}
	set := x509bundle.NewSet()
	var svid *x509svid.SVID
	for _, a := range resp.Resources {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		switch sec.Name {
		case "default":
			tc := sec.GetTlsCertificate()
			if svid, err = x509svid.Parse(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()); err != nil {
				t.Fatal(err)
			}
		case "ROOTCA":
			roots, _ := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
			set.Add(x509bundle.FromX509Authorities(localTD, roots))
		case "spiffe://partner.test":
			roots, _ := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
			set.Add(x509bundle.FromX509Authorities(partnerTD, roots))
		}
	}
	if svid == nil || set.Len() != 2 {
		t.Fatalf("SDS: SVID %v, %d bundles", svid != nil, set.Len())
	}
	return svid, set
}

// TestFederationMTLSAcrossTrustDomains is the must-show call of
// federation: a workload of warden's trust domain (cluster.local, its
// SVID and bundles from warden agent: the SDS socket for its server, the
// Workload API for its client) and one of partner.test, whose CA warden
// does not run (its bundle served by go-spiffe's federation.NewHandler;
// it learns warden's bundle from warden's bundle endpoint with go-spiffe's
// federation.FetchBundle), call each other over gRPC mTLS both ways, each
// call a new connection and handshake. Isolation: a certificate for
// spiffe://cluster.local/ns/default/sa/x signed by partner.test's CA is
// refused by the real handshake of the warden workload's server, and a
// foreign-signed server claiming the warden workload's ID by its client;
// a server with a flat pool of the same roots (Istio's ROOTCA with
// caCertificates merged) accepts the forged client, which is why it
// matters.
func TestFederationMTLSAcrossTrustDomains(t *testing.T) {
	epAddr := testkit.FreeAddr(t)
	dir, data, addr, peer := federationFixture(t, "--bundle-endpoint-listen", epAddr, "--bundle-endpoint-refresh-hint", "1s")
	sock, wSock, _ := startAgent(t, dir, data, addr, "default", "sleep")
	wardenID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	partnerID := spiffeid.RequireFromString("spiffe://partner.test/ns/payments/sa/api")

	// The warden workload: its server from SDS, its client from the
	// Workload API, once the agent relays partner.test's bundle.
	var svid *x509svid.SVID
	var sdsSet *x509bundle.Set
	testkit.Eventually(t, 15*time.Second, func() error {
		_, err := agentBundles(t, sock, "spiffe://partner.test")
		return err
	})
	svid, sdsSet = agentSVID(t, sock)
	if svid.ID != wardenID {
		t.Fatalf("the agent's SVID is %s", svid.ID)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	x, err := workloadapi.FetchX509Context(wctx, workloadapi.WithAddr("unix://"+wSock))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.Bundles.GetX509BundleForTrustDomain(partnerTD); err != nil {
		t.Fatalf("the Workload API has no partner.test bundle: %v", err)
	}
	wardenServer, wardenConns := grpcServe(t, tlsconfig.MTLSServerConfig(svid, sdsSet, tlsconfig.AuthorizeAny()))

	// The partner.test workload: its own CA, and warden's bundle from
	// warden's bundle endpoint (https_spiffe, bootstrapped with
	// root-cert.pem), as any SPIFFE implementation would fetch it.
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	bootstrap, _ := ca.ParseCerts(rootPEM)
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	wardenBundle, err := federation.FetchBundle(fctx, localTD, "https://"+epAddr+"/",
		federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(localTD, bootstrap), spiffeid.RequireFromString("spiffe://cluster.local/ns/warden-system/sa/warden")))
	if err != nil {
		t.Fatal(err)
	}
	partnerSet := x509bundle.NewSet(x509bundle.FromX509Authorities(partnerTD, peer.m.Roots), wardenBundle.X509Bundle())
	pc, pk := peer.issue(t, partnerID)
	partnerSVID := &x509svid.SVID{ID: partnerID, Certificates: []*x509.Certificate{pc}, PrivateKey: pk}
	partnerServer, partnerConns := grpcServe(t, tlsconfig.MTLSServerConfig(partnerSVID, partnerSet, tlsconfig.AuthorizeAny()))

	const calls = 5
	for i := range calls {
		// warden → partner.test: the client checks the server is
		// partnerID, with the partner.test bundle the agent relayed.
		got, err := call(partnerServer, tlsconfig.MTLSClientConfig(x.DefaultSVID(), x.Bundles, tlsconfig.AuthorizeID(partnerID)))
		if err != nil || got != wardenID.String() {
			t.Fatalf("call %d cluster.local → partner.test: %q, %v", i, got, err)
		}
		// partner.test → warden.
		got, err = call(wardenServer, tlsconfig.MTLSClientConfig(partnerSVID, partnerSet, tlsconfig.AuthorizeID(wardenID)))
		if err != nil || got != partnerID.String() {
			t.Fatalf("call %d partner.test → cluster.local: %q, %v", i, got, err)
		}
	}
	if wardenConns.n.Load() != calls || partnerConns.n.Load() != calls {
		t.Fatalf("%d and %d connections for %d calls each: not a new handshake per call", wardenConns.n.Load(), partnerConns.n.Load(), calls)
	}

	// Isolation: the foreign CA signs for warden's trust domain.
	fc, fk := peer.issue(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/x"))
	forged := &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/x"), Certificates: []*x509.Certificate{fc}, PrivateKey: fk}
	if got, err := call(wardenServer, tlsconfig.MTLSClientConfig(forged, partnerSet, tlsconfig.AuthorizeID(wardenID))); err == nil {
		t.Fatalf("the warden workload's server accepted a foreign-signed %s (saw %s)", forged.ID, got)
	}
	sc, sk := peer.issue(t, wardenID)
	impostor, _ := grpcServe(t, tlsconfig.MTLSServerConfig(&x509svid.SVID{ID: wardenID, Certificates: []*x509.Certificate{sc}, PrivateKey: sk}, partnerSet, tlsconfig.AuthorizeAny()))
	if _, err := call(impostor, tlsconfig.MTLSClientConfig(x.DefaultSVID(), x.Bundles, tlsconfig.AuthorizeID(wardenID))); err == nil {
		t.Fatal("the warden workload's client accepted a foreign-signed server claiming " + wardenID.String())
	}
	// The same forged client against a flat pool of the same roots.
	flat := x509.NewCertPool()
	for _, b := range sdsSet.Bundles() {
		for _, r := range b.X509Authorities() {
			flat.AddCert(r)
		}
	}
	flatServer, _ := grpcServe(t, &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: flat,
		Certificates: []tls.Certificate{{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}}})
	serverPool := x509.NewCertPool()
	for _, r := range bootstrap {
		serverPool.AddCert(r)
	}
	got, err := call(flatServer, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: serverPool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{fc.Raw}, PrivateKey: fk}},
		// The server's certificate is an X509-SVID (no DNS name): check
		// the chain, not a host name.
		InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: serverPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}})
	if err != nil || got != forged.ID.String() {
		t.Fatalf("a flat pool refused the forged client (the comparison shows nothing): %q, %v", got, err)
	}
	t.Logf("a foreign-signed %s: refused by the warden workload's handshake, accepted by a flat pool", forged.ID)
}
