package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
)

// rootCA reads the trusted CA of a ROOTCA secret in an SDS response.
func rootCA(t *testing.T, resp *discovery.DiscoveryResponse) []byte {
	t.Helper()
	for _, r := range resp.Resources {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if s.Name == "ROOTCA" {
			return s.GetValidationContext().GetTrustedCa().GetInlineBytes()
		}
	}
	t.Fatalf("no ROOTCA in %d secrets", len(resp.Resources))
	return nil
}

// TestADSFollowsRootChange: a sidecar connected over ADS holds ROOTCA with
// the plugged-in root; when the operator replaces cacerts with a new root,
// the open stream is pushed the new bundle. (Before the bundle had one
// publisher, ADS heard only of SVID rotations and kept the old root.)
func TestADSFollowsRootChange(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	apiserver.ServiceAccount(t, shop, "sleep")
	rootA := catest.Root(t, ca.CAOptions{CommonName: "root A"})
	interA, _ := ca.NewIntermediate(rootA, ca.CAOptions{CommonName: "intermediate A", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(context.Background(), kubetest.CacertsSecret(ns, interA), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addr, logs := startServe(t, ns)
	pool := x509.NewCertPool()
	pool.AddCert(rootA.Cert)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := openADS(t, conn, apiserver.Token(t, shop, "sleep", "istio-ca"))
	node := fmt.Sprintf("sidecar~10.20.0.9~sleep-1.%s~%s.svc.cluster.local", shop, shop)
	first, err := s.get(node, resource.SecretType, []string{"ROOTCA"}, nil)
	if err != nil {
		t.Fatalf("ROOTCA: %v\n%s", err, logs.String())
	}
	if !bytes.Equal(rootCA(t, first), ca.EncodeCerts(rootA.Cert)) {
		t.Fatalf("ROOTCA before the change:\n%s", rootCA(t, first))
	}

	rootB := catest.Root(t, ca.CAOptions{CommonName: "root B"})
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.PluggedName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := kubetest.CacertsSecret(ns, rootB)
	upd.ResourceVersion = sec.ResourceVersion
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(context.Background(), upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pushed := make(chan *discovery.DiscoveryResponse, 1)
	go func() {
		resp, err := s.get(node, resource.SecretType, []string{"ROOTCA"}, first) // ACK, then wait for a push
		if err == nil {
			pushed <- resp
		}
	}()
	select {
	case resp := <-pushed:
		if got := rootCA(t, resp); !bytes.Equal(got, ca.EncodeCerts(rootB.Cert)) {
			t.Fatalf("pushed ROOTCA is not root B:\n%s", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the open ADS stream kept the old ROOTCA after cacerts changed\n%s", logs.String())
	}
}
