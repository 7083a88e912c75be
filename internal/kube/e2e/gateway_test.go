package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptr[T any](v T) *T { return &v }

// selfSigned is a certificate for host and its key, PEM.
func selfSigned(t *testing.T, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// ingressGateway registers a gateway pod (labels istio=ingressgateway) at
// ip in ns, behind a Service, as an Istio install does.
func ingressGateway(t *testing.T, ns, ip string) {
	t.Helper()
	ctx := context.Background()
	apiserver.ServiceAccount(t, ns, "istio-ingressgateway")
	// Gateways select in every namespace: the namespace label keeps
	// another test's Gateway (-count) from selecting this pod too.
	labels := map[string]string{"istio": "ingressgateway", "install": ns}
	if _, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ingressgateway-1", Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: "istio-ingressgateway", Containers: []corev1.Container{{Name: "proxy", Image: "example.org/proxy"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := apiserver.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(8443)}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := apiserver.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "istio-ingressgateway-a", Labels: map[string]string{discoveryv1.LabelServiceName: "istio-ingressgateway"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("https"), Port: ptr(int32(8443))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "ingressgateway-1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// grantSecretRead lets service account sa list the Secrets of ns, as an
// Istio install's Role does for its gateways.
func grantSecretRead(t *testing.T, ns, sa string) {
	t.Helper()
	ctx := context.Background()
	if _, err := apiserver.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "gateway-secrets"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "watch", "list"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := apiserver.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "gateway-secrets"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "gateway-secrets"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func tlsSecret(ns, name string, cert, key []byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": cert, "tls.key": key}}
}

// handshake serves TLS with the certificate and key of an SDS secret and
// returns the certificate a client verifying web.example.com against
// roots sees.
func handshake(t *testing.T, sec *tlsv3.Secret, roots []byte) []byte {
	t.Helper()
	tc := sec.GetTlsCertificate()
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("the served credential is not a usable certificate and key: %v", err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "web.example.com"})
	if err != nil {
		t.Fatalf("TLS handshake with the served credential: %v", err)
	}
	defer c.Close()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.ConnectionState().PeerCertificates[0].Raw})
}

func credential(t *testing.T, resp *discovery.DiscoveryResponse) *tlsv3.Secret {
	t.Helper()
	for _, r := range resp.Resources {
		var s tlsv3.Secret
		if err := r.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		if s.Name == "kubernetes://web-cert" {
			return &s
		}
	}
	return nil
}

// awaitCredential ACKs last (when not nil) and reads SDS responses until
// one holds kubernetes://web-cert with a certificate other than old.
func awaitCredential(t *testing.T, s *adsStream, node string, last *discovery.DiscoveryResponse, old []byte) (*tlsv3.Secret, *discovery.DiscoveryResponse) {
	t.Helper()
	type result struct {
		sec  *tlsv3.Secret
		resp *discovery.DiscoveryResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		for {
			resp, err := s.get(node, resource.SecretType, []string{"kubernetes://web-cert"}, last)
			if err != nil {
				done <- result{err: err}
				return
			}
			last = resp
			if sec := credential(t, resp); sec != nil && !bytes.Equal(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), old) {
				done <- result{sec, resp, nil}
				return
			}
		}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("SDS: %v", r.err)
		}
		return r.sec, r.resp
	case <-time.After(30 * time.Second):
		t.Fatal("no new kubernetes://web-cert on the stream within 30s")
		return nil, nil
	}
}

// TestGatewayCredentialName: an ingress gateway proxy selected by a
// Gateway gets an HTTPS listener whose certificate is SDS
// kubernetes://web-cert, and warden serves that secret from the Secret
// web-cert of the gateway's namespace in the real API server; the
// certificate completes a TLS handshake for web.example.com, and
// replacing the Secret pushes the new certificate on the open stream.
// A Secret of that name in another namespace is never served to it.
func TestGatewayCredentialName(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	gw := apiserver.Namespace(t, "ingress")
	other := apiserver.Namespace(t, "other")
	ingressGateway(t, gw, "10.40.0.1")
	grantSecretRead(t, gw, "istio-ingressgateway")
	certA, keyA := selfSigned(t, "web.example.com")
	ctx := context.Background()
	// Another namespace's Secret of the same name must not be used.
	otherCert, otherKey := selfSigned(t, "web.example.com")
	if _, err := apiserver.Client.CoreV1().Secrets(other).Create(ctx, tlsSecret(other, "web-cert", otherCert, otherKey), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gateway := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: %[1]s}
spec:
  selector: {istio: ingressgateway, install: %[1]s}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: %[1]s}
spec:
  hosts: [web.example.com]
  gateways: [web]
  http:
  - route: [{destination: {host: istio-ingressgateway, port: {number: 443}}}]
`, gw)
	if out, err := apiserver.Kubectl(t, []byte(gateway), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	addr, logs := startServe(t, ns)
	conn := dialServe(t, ns, addr, logs)
	node := fmt.Sprintf("router~10.40.0.1~ingressgateway-1.%s~%s.svc.cluster.local", gw, gw)
	tok := apiserver.Token(t, gw, "istio-ingressgateway", "istio-ca")

	// The listener first: it names the credential.
	var s *adsStream
	kubetest.Eventually(t, 30*time.Second, func() error {
		s = openADS(t, conn, tok)
		lds, err := s.get(node, resource.ListenerType, nil, nil)
		if err != nil {
			return err
		}
		for _, r := range lds.Resources {
			var l listenerv3.Listener
			if r.UnmarshalTo(&l) == nil && l.Name == "0.0.0.0_443" && strings.Contains(string(r.Value), "kubernetes://web-cert") {
				return nil
			}
		}
		return fmt.Errorf("no listener 0.0.0.0_443 naming kubernetes://web-cert in %d listeners", len(lds.Resources))
	})

	// The Secret is created after the gateway connected: it reaches the
	// SDS stream.
	if _, err := apiserver.Client.CoreV1().Secrets(gw).Create(ctx, tlsSecret(gw, "web-cert", certA, keyA), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, first := awaitCredential(t, s, node, nil, nil)
	if !bytes.Equal(got.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), certA) {
		t.Fatalf("served certificate is not web-cert's of namespace %s", gw)
	}
	if peer := handshake(t, got, certA); !bytes.Equal(peer, certA) {
		t.Fatal("the handshake did not present certificate A")
	}

	// Rotation: the Secret is replaced; the open stream gets the new one.
	certB, keyB := selfSigned(t, "web.example.com")
	if _, err := apiserver.Client.CoreV1().Secrets(gw).Update(ctx, tlsSecret(gw, "web-cert", certB, keyB), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _ = awaitCredential(t, s, node, first, certA)
	if !bytes.Equal(got.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), certB) {
		t.Fatal("pushed certificate is not the rotated one")
	}
	if peer := handshake(t, got, certB); !bytes.Equal(peer, certB) {
		t.Fatal("the handshake after rotation did not present certificate B")
	}
	if strings.Contains(logs.String(), string(keyA)) || strings.Contains(logs.String(), string(keyB)) {
		t.Fatal("a private key reached the log")
	}
}

// TestGatewayCredentialsNeedSecretRead: a gateway proxy gets its
// namespace's credentialName keys only when its service account may list
// Secrets there (a SubjectAccessReview, as istiod asks). Two gateways
// with the same Gateway and Secret in two namespaces: the one whose
// service account has the Role gets the key; the other, whose service
// account has none, gets its listener but never the key, and the log
// names the grant it lacks. A Secret that is not a TLS credential is
// never served, whatever its keys.
func TestGatewayCredentialsNeedSecretRead(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	allowed, denied := apiserver.Namespace(t, "gw-allowed"), apiserver.Namespace(t, "gw-denied")
	ctx := context.Background()
	cert, key := selfSigned(t, "web.example.com")
	for i, gw := range []string{allowed, denied} {
		ingressGateway(t, gw, fmt.Sprintf("10.41.0.%d", i+1))
		if _, err := apiserver.Client.CoreV1().Secrets(gw).Create(ctx, tlsSecret(gw, "web-cert", cert, key), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Keys that parse, in a Secret of a type that is no TLS credential.
		if _, err := apiserver.Client.CoreV1().Secrets(gw).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-tls"}, Type: "istio.io/key-and-cert",
			Data: map[string][]byte{"tls.crt": cert, "tls.key": key}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		gateway := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: %[1]s}
spec:
  selector: {istio: ingressgateway, install: %[1]s}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 8443, name: https-other, protocol: HTTPS}
    hosts: [other.example.com]
    tls: {mode: SIMPLE, credentialName: not-tls}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: %[1]s}
spec:
  hosts: [web.example.com, other.example.com]
  gateways: [web]
  http:
  - route: [{destination: {host: istio-ingressgateway, port: {number: 443}}}]
`, gw)
		if out, err := apiserver.Kubectl(t, []byte(gateway), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	grantSecretRead(t, allowed, "istio-ingressgateway")
	addr, logs := startServe(t, ns)
	conn := dialServe(t, ns, addr, logs)
	secretsOf := func(gw, ip string) map[string]bool {
		t.Helper()
		node := fmt.Sprintf("router~%s~ingressgateway-1.%s~%s.svc.cluster.local", ip, gw, gw)
		tok := apiserver.Token(t, gw, "istio-ingressgateway", "istio-ca")
		var names map[string]bool
		kubetest.Eventually(t, 30*time.Second, func() error {
			s := openADS(t, conn, tok)
			lds, err := s.get(node, resource.ListenerType, nil, nil)
			if err != nil {
				return err
			}
			if !strings.Contains(fmt.Sprint(lds.Resources), "kubernetes://web-cert") {
				return fmt.Errorf("no listener names kubernetes://web-cert yet")
			}
			sds, err := s.get(node, resource.SecretType, []string{"kubernetes://web-cert", "kubernetes://not-tls"}, nil)
			if err != nil {
				return err
			}
			names = map[string]bool{}
			for _, r := range sds.Resources {
				var sec tlsv3.Secret
				if r.UnmarshalTo(&sec) == nil {
					names[sec.Name] = true
				}
			}
			if gw == allowed && !names["kubernetes://web-cert"] {
				return fmt.Errorf("the granted gateway has no kubernetes://web-cert yet: %v", names)
			}
			return nil
		})
		return names
	}
	if got := secretsOf(allowed, "10.41.0.1"); !got["kubernetes://web-cert"] || got["kubernetes://not-tls"] {
		t.Errorf("granted gateway's secrets: %v, want kubernetes://web-cert and not kubernetes://not-tls", got)
	}
	if got := secretsOf(denied, "10.41.0.2"); got["kubernetes://web-cert"] || got["kubernetes://not-tls"] {
		t.Errorf("a gateway whose service account may not list secrets got %v", got)
	}
	for _, want := range []string{
		fmt.Sprintf("service account %s/istio-ingressgateway may not list secrets in namespace %s", denied, denied),
		"Secret not-tls is of type istio.io/key-and-cert, not a TLS credential",
	} {
		kubetest.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(logs.String(), want) {
				return fmt.Errorf("the log does not say %q", want)
			}
			return nil
		})
	}
	if strings.Contains(logs.String(), string(key)) {
		t.Fatal("a private key reached the log")
	}
}
