package app_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestGatewayCredentialsDir: in standalone mode a Gateway's
// credentialName is read from --credentials-dir/<namespace>/<name>, served
// to the gateway proxy over ADS, and a changed file is pushed to the open
// stream.
func TestGatewayCredentialsDir(t *testing.T) {
	dir := t.TempDir()
	data, mesh, creds := filepath.Join(dir, "data"), filepath.Join(dir, "mesh"), filepath.Join(dir, "creds")
	os.MkdirAll(mesh, 0o755)
	os.MkdirAll(filepath.Join(creds, "istio-system", "web-cert"), 0o700)
	os.WriteFile(filepath.Join(mesh, "gateway.yaml"), []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  hosts: [istio-ingressgateway]
  resolution: STATIC
  ports: [{number: 443, name: https}]
  endpoints: [{address: 127.0.0.9, labels: {istio: ingressgateway}, serviceAccount: ingress}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
`), 0o644)
	writePair := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		tmpl := &x509.Certificate{SerialNumber: serial, DNSNames: []string{"web.example.com"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		os.WriteFile(filepath.Join(creds, "istio-system", "web-cert", "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
		os.WriteFile(filepath.Join(creds, "istio-system", "web-cert", "tls.crt"), cert, 0o600)
		return cert
	}
	certA := writePair()
	// The ingress service account may read the namespace's credentials;
	// no other may (TestGatewayCredentialsGrants).
	os.WriteFile(filepath.Join(creds, "istio-system", "service-accounts"), []byte("ingress\n"), 0o600)
	addr, _ := serve(t, data, "--config-dir", mesh, "--credentials-dir", creds, "--push-debounce", "20ms")
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	pool.AppendCertsFromPEM(b)
	_, tok, _ := run(t, "token", "--data-dir", data, "--ns", "istio-system", "--sa", "ingress")
	s, _ := openADS(t, addr, pool, tok)
	node := &corev3.Node{Id: "router~127.0.0.9~ingress-1.istio-system~istio-system.svc.cluster.local"}
	get := func(last *discovery.DiscoveryResponse) ([]byte, *discovery.DiscoveryResponse) {
		t.Helper()
		req := &discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: []string{"kubernetes://web-cert"}}
		if last != nil {
			req.VersionInfo, req.ResponseNonce = last.VersionInfo, last.Nonce
		}
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Resources {
			var sec tlsv3.Secret
			if r.UnmarshalTo(&sec) == nil && sec.Name == "kubernetes://web-cert" {
				return sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), resp
			}
		}
		t.Fatalf("no kubernetes://web-cert in %d secrets", len(resp.Resources))
		return nil, nil
	}
	got, first := get(nil)
	if !bytes.Equal(got, certA) {
		t.Fatal("the served certificate is not the file's")
	}
	certB := writePair()
	if got, _ := get(first); !bytes.Equal(got, certB) {
		t.Fatal("the pushed certificate is not the rewritten file's")
	}
}
