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
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardenmesh/warden/internal/testkit"
)

// credentialsDirMesh is a standalone serve with an ingress gateway
// (istio-system/ingress at 127.0.0.9) selected by a Gateway whose HTTPS
// server names credentialName web-cert, kept in --credentials-dir;
// grants is the namespace's service-accounts file. writePair writes a
// new certificate and key and returns the certificate.
type credentialsDirMesh struct {
	addr      string
	pool      *x509.CertPool
	tok       string
	logs      *syncBuffer
	writePair func() []byte
}

func startCredentialsDirMesh(t *testing.T, grants string) *credentialsDirMesh {
	t.Helper()
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
	m := &credentialsDirMesh{}
	m.writePair = func() []byte {
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
	os.WriteFile(filepath.Join(creds, "istio-system", "service-accounts"), []byte(grants), 0o600)
	m.addr = testkit.FreeAddr(t)
	_, m.logs = serveLogged(t, data, m.addr, "--config-dir", mesh, "--credentials-dir", creds, "--push-debounce", "20ms")
	m.pool = x509.NewCertPool()
	b, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	m.pool.AppendCertsFromPEM(b)
	_, m.tok, _ = run(t, "token", "--data-dir", data, "--ns", "istio-system", "--sa", "ingress")
	return m
}

// credential asks the gateway's stream for kubernetes://web-cert (after
// the answer last) and returns the certificate served, nil if none.
func gatewayCredential(t *testing.T, s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, last *discovery.DiscoveryResponse) ([]byte, *discovery.DiscoveryResponse) {
	t.Helper()
	node := &corev3.Node{Id: "router~127.0.0.9~ingress-1.istio-system~istio-system.svc.cluster.local"}
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
	return nil, resp
}

// TestGatewayCredentialsDir: in standalone mode a Gateway's
// credentialName is read from --credentials-dir/<namespace>/<name>, served
// to the gateway proxy over ADS when its service account is granted in
// the namespace's service-accounts file, and a changed file is pushed to
// the open stream.
func TestGatewayCredentialsDir(t *testing.T) {
	m := startCredentialsDirMesh(t, "# gateways\ningress\n")
	certA := m.writePair()
	s, _ := openADS(t, m.addr, m.pool, m.tok)
	got, first := gatewayCredential(t, s, nil)
	if !bytes.Equal(got, certA) {
		t.Fatal("the served certificate is not the file's")
	}
	certB := m.writePair()
	if got, _ := gatewayCredential(t, s, first); !bytes.Equal(got, certB) {
		t.Fatal("the pushed certificate is not the rewritten file's")
	}
}

// TestGatewayCredentialsGrants: a gateway whose service account the
// namespace's service-accounts file does not list gets no credential
// (its listener waits), and the log names the line to add.
func TestGatewayCredentialsGrants(t *testing.T) {
	m := startCredentialsDirMesh(t, "other-gateway\n")
	m.writePair()
	s, _ := openADS(t, m.addr, m.pool, m.tok)
	if got, _ := gatewayCredential(t, s, nil); got != nil {
		t.Fatal("a gateway whose service account is not granted got the credential")
	}
	want := "service account istio-system/ingress may not read the credentials of namespace istio-system: add ingress to "
	if !strings.Contains(m.logs.String(), want) {
		t.Fatalf("the log does not say %q:\n%s", want, m.logs.String())
	}
}
