package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
)

// serveTLS runs an empty gRPC server with cert on loopback.
func serveTLS(t *testing.T, cert *tls.Certificate) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})))
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// TestClientRequiresTheControlPlaneIdentity: a server holding a valid
// mesh certificate with the CA's address in it, but a workload's
// identity, is refused by a client that requires the control plane's
// SPIFFE ID; the real CA's certificate is accepted.
func TestClientRequiresTheControlPlaneIdentity(t *testing.T) {
	t.Parallel()
	root := catest.Root(t, ca.CAOptions{})
	a := catest.Authority(t, root)
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	impostor, err := a.IssueServing(ca.ServingOptions{ID: catest.ID("default", "evil"), IPs: loopback})
	if err != nil {
		t.Fatal(err)
	}
	real, err := a.IssueServing(ca.ServingOptions{ID: client.ControlPlaneID(catest.TrustDomain), IPs: loopback})
	if err != nil {
		t.Fatal(err)
	}
	call := func(addr string, cfg client.Config) error {
		cfg.Addr, cfg.Roots = addr, pool
		c, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = c.CreateCertificate(ctx, []byte("csr"), 0, "token")
		return err
	}
	evil, good := serveTLS(t, impostor), serveTLS(t, real)
	want := client.ControlPlaneID(catest.TrustDomain)
	// Host name alone: the impostor passes the TLS checks (the empty
	// server then answers Unimplemented).
	if err := call(evil, client.Config{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("host name only: %v", err)
	}
	err = call(evil, client.Config{ServerID: want})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "is spiffe://cluster.local/ns/default/sa/evil, not the control plane spiffe://cluster.local/ns/warden-system/sa/warden") {
		t.Fatalf("impostor with the identity check: %v", err)
	}
	if err := call(good, client.Config{ServerID: want}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("the real CA: %v", err)
	}
}
