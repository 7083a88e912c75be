package testkit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
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
	return OpenBundleStream(t, addr, rootPEM, token).Close
}

// BundleStream is an SDS stream for ROOTCA that has ACKed its first
// bundle and takes the next one only when told (Take): a consumer slow to
// take up a new root.
type BundleStream struct {
	stream secretsvc.SecretDiscoveryService_StreamSecretsClient
	Close  func()
	// First is the bundle the stream took when it opened.
	First []*x509.Certificate
}

// OpenBundleStream opens a BundleStream to a warden CA port at addr (TLS
// verified with rootPEM, as 127.0.0.1), authenticated with a bearer
// token; it is closed when the test ends.
func OpenBundleStream(t *testing.T, addr string, rootPEM []byte, token string) *BundleStream {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	closeStream := func() { cancel(); conn.Close() }
	t.Cleanup(closeStream)
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"ROOTCA"}
	if err := s.Send(&discovery.DiscoveryRequest{ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	b := &BundleStream{stream: s, Close: closeStream}
	b.First = b.Take(t)
	return b
}

// Take receives the next ROOTCA the server pushes, ACKs it, and returns
// its roots.
func (b *BundleStream) Take(t *testing.T) []*x509.Certificate {
	t.Helper()
	resp, err := b.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	for _, a := range resp.Resources {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		rest := sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			roots = append(roots, c)
		}
	}
	if err := b.stream.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: []string{"ROOTCA"}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	return roots
}
