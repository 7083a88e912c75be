package server_test

import (
	"crypto/x509"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/token"
)

// TestExpiredSigningCertUnavailable (issue #28, 2): the CA's signing
// intermediate expires (a Vault intermediate not renewed in time), on
// the wall clock, under real TLS. A workload connected before gets
// Unavailable naming the expiry; a new one used to fail its handshake
// with a bare "tls: internal error" (the serving certificate could not
// be issued); now the CA presents its last serving certificate, the
// workload's TLS stack refuses it as expired, and the client says what
// that means, still Unavailable. The CA logs why, once.
func TestExpiredSigningCertUnavailable(t *testing.T) {
	t.Parallel()
	root := catest.Root(t, ca.CAOptions{CommonName: "root"})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Organization: catest.TrustDomain.Name(), CommonName: "short intermediate", TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, inter)
	tokKey := catest.Key(t, ca.ECDSAP256)
	issuer, err := token.NewIssuer("warden", tokKey, ca.SystemClock{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Signer: a, Authenticators: []server.Authenticator{&server.JWTAuthenticator{
		TrustDomain: catest.TrustDomain, Verifier: &token.Verifier{Issuer: "warden", Keys: issuer.KeySet()}}}})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Buffer{}
	serving := &server.ServingCert{Authority: a, Log: slog.New(slog.NewTextHandler(logs, nil)), Options: ca.ServingOptions{
		ID: catest.ID("warden-system", "warden"), IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}}
	g := grpc.NewServer(server.Credentials(serving))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	tok, err := issuer.Mint(saX, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newClient := func() *client.Client {
		t.Helper()
		c, err := client.New(client.Config{Addr: lis.Addr().String(), Roots: rootPool(root)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	connected := newClient()
	if _, err := connected.Request(ctx(t), client.Request{Token: tok}); err != nil {
		t.Fatalf("before the expiry: %v", err)
	}
	time.Sleep(time.Until(inter.Cert.NotAfter) + time.Second)

	_, err = connected.Request(ctx(t), client.Request{Token: tok})
	wantStatus(t, err, codes.Unavailable, "ca: CA not ready: signing certificate expired at "+inter.Cert.NotAfter.UTC().Format(time.RFC3339))
	for range 3 {
		_, err = newClient().Request(ctx(t), client.Request{Token: tok})
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || strings.Contains(st.Message(), "internal error") ||
			!strings.HasPrefix(st.Message(), "the CA at "+lis.Addr().String()+" presents an expired certificate: a warden CA does so when its own signing certificate has expired") ||
			!strings.Contains(st.Message(), "x509: certificate has expired or is not yet valid") {
			t.Fatalf("a new connection after the expiry: %v", err)
		}
	}
	if n := strings.Count(logs.String(), `level=ERROR msg="the CA cannot issue its own serving certificate`); n != 1 {
		t.Errorf("the serving certificate's failure logged %d times, want once:\n%s", n, logs.String())
	}
}

func rootPool(m *ca.Material) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Roots[0])
	return p
}
