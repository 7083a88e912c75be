package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/fedstore"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// partnerEndpoint serves partner.test's bundle (roots, sequence seq)
// with go-spiffe's federation.NewHandler over https_spiffe, presenting an
// SVID of m, on addr ("127.0.0.1:0" for a new port); it returns the
// address and a stop.
func partnerEndpoint(t *testing.T, m *ca.Material, addr string, seq uint64, roots []*x509.Certificate) (string, func()) {
	t.Helper()
	addr, srv := testkit.ServeBundleEndpoint(t, m, spiffeid.RequireFromString("spiffe://partner.test/bundle-server"), addr, seq, roots)
	return addr, func() { srv.Close() }
}

// sdsForeign asks a replica's central SDS, as ns/sa (a TokenRequest
// token), for spiffe://partner.test and returns its roots.
func sdsForeign(t *testing.T, addr string, rootPEM []byte, ns, sa string) ([]*x509.Certificate, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiserver.Token(t, ns, sa, "istio-ca")), 10*time.Second)
	defer cancel()
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&discovery.DiscoveryRequest{ResourceNames: []string{"default", "spiffe://partner.test"}, TypeUrl: resource.SecretType}); err != nil {
		return nil, err
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	for _, a := range resp.Resources {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		if sec.Name == "spiffe://partner.test" {
			return ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
		}
	}
	return nil, fmt.Errorf("no spiffe://partner.test in the answer")
}

// TestFederationKubernetesReplicas: in Kubernetes mode the leader alone
// polls the peer's bundle endpoint (go-spiffe's, not warden) and stores
// each bundle in ConfigMap warden-federation-bundles; every replica
// serves it from there to the namespace that federates (central SDS),
// and follows the peer's new root through it.
func TestFederationKubernetesReplicas(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	appNS := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, appNS, "sleep")
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	peerAddr, stopPeer := partnerEndpoint(t, m, "127.0.0.1:0", 1, m.Roots)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "partner.pem"), ca.EncodeCerts(m.Roots...), 0o600)
	fedFile := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fedFile, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://`+peerAddr+`/
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: "spiffe://partner.test/bundle-server"}
  trustDomainBundleFile: partner.pem
  namespaces: [`+appNS+`]
`), 0o600)
	flags := []string{"--federation-file", fedFile, "--federation-min-refresh", "1s"}
	addrA, logsA, _ := startServeWith(t, ns, "replica-a", flags...)
	addrB, logsB, _ := startServeWith(t, ns, "replica-b", flags...)

	kubetest.Eventually(t, 30*time.Second, func() error {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), fedstore.ConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data["partner.test.json"] == "" || cm.Data["partner.test.fetched"] == "" {
			return fmt.Errorf("ConfigMap %s holds %d keys", fedstore.ConfigMap, len(cm.Data))
		}
		return nil
	})
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := sec.Data["root-cert.pem"]
	for _, addr := range []string{addrA, addrB} {
		got, err := sdsForeign(t, addr, rootPEM, appNS, "sleep")
		if err != nil || !ca.SameRoots(got, m.Roots) {
			t.Fatalf("replica at %s: spiffe://partner.test: %d roots, %v", addr, len(got), err)
		}
	}

	// The peer publishes a second root (the first still signs its
	// endpoint's SVID): the leader fetches and stores it, both replicas
	// serve it.
	next, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root 2", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	both := append(append([]*x509.Certificate{}, m.Roots...), next.Roots...)
	stopPeer()
	partnerEndpoint(t, m, peerAddr, 2, both)
	for _, addr := range []string{addrA, addrB} {
		kubetest.Eventually(t, 30*time.Second, func() error {
			got, err := sdsForeign(t, addr, rootPEM, appNS, "sleep")
			if err != nil {
				return err
			}
			if !ca.SameRoots(got, both) {
				return fmt.Errorf("replica at %s serves %d partner.test roots, want 2", addr, len(got))
			}
			return nil
		})
	}
	// Only the leader polled: one replica took the bundle from the
	// endpoint, the other from the ConfigMap.
	fetched := func(l string) bool {
		return strings.Contains(l, `msg="federation: new bundle" trustDomain=partner.test roots=2`)
	}
	stored := func(l string) bool {
		return strings.Contains(l, `msg="federation: new bundle from the store" trustDomain=partner.test roots=2`)
	}
	a, b := logsA.String(), logsB.String()
	if !(fetched(a) && stored(b) && !fetched(b)) && !(fetched(b) && stored(a) && !fetched(a)) {
		t.Fatalf("want one replica fetching and the other reading the store:\nreplica-a:\n%s\nreplica-b:\n%s", a, b)
	}
}
