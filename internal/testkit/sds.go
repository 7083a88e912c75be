package testkit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// SilentBundleStream opens an SDS stream for ROOTCA to a warden CA port
// at addr (TLS verified with rootPEM, as 127.0.0.1), authenticated with a
// bearer token, ACKs the first bundle and then says nothing more: the
// consumer a root rotation must wait for. Calling the returned function
// closes it.
func SilentBundleStream(t *testing.T, addr string, rootPEM []byte, token string) (closeStream func()) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	closeStream = func() { cancel(); conn.Close() }
	t.Cleanup(closeStream)
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"ROOTCA"}
	if err := s.Send(&discovery.DiscoveryRequest{ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	return closeStream
}
