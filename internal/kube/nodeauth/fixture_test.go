package nodeauth_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
	"github.com/wardenmesh/warden/internal/kube/tokenreview"
	"github.com/wardenmesh/warden/internal/testkit"
)

// The tests share one real kube-apiserver and etcd (kubetest), and one
// index of its pods, as a warden replica has one.
var (
	apiserver kubetest.Server
	podsOnce  sync.Once
	pods      *nodeauth.Pods
)

func TestMain(m *testing.M) { kubetest.Main(m, &apiserver) }

// sharedPods is the binary's index of the API server's pods, listed.
func sharedPods(t testing.TB) *nodeauth.Pods {
	t.Helper()
	podsOnce.Do(func() {
		pods = &nodeauth.Pods{Client: apiserver.Client}
		go func() {
			if err := pods.Run(context.Background()); err != nil {
				panic(err) // the binary's tests cannot go on without it
			}
		}()
	})
	kubetest.Eventually(t, 30*time.Second, func() error {
		if !pods.HasSynced() {
			return errors.New("pods not listed yet")
		}
		return nil
	})
	return pods
}

// podSpec is a pod as Istio's node authorization tests describe one.
type podSpec struct{ name, ns, sa, node string }

// createPod creates the pod (and its service account) scheduled on its
// node, as the scheduler would have left it, and waits until the index
// holds it.
func createPod(t testing.TB, p podSpec) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	_, err := apiserver.Client.CoreV1().ServiceAccounts(p.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: p.sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := apiserver.Client.CoreV1().Pods(p.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name},
		Spec: corev1.PodSpec{ServiceAccountName: p.sa, NodeName: p.node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitIndexed(t, pod)
	return pod
}

// waitIndexed waits until the index holds pod as it is.
func waitIndexed(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	idx := sharedPods(t)
	kubetest.Eventually(t, 30*time.Second, func() error {
		if got := idx.Get(pod.Namespace, pod.Name); got == nil || got.UID != pod.UID {
			return fmt.Errorf("pod %s/%s (%s) not indexed", pod.Namespace, pod.Name, pod.UID)
		}
		return nil
	})
}

// failPod moves pod to phase Failed, as the kubelet reports a pod whose
// containers failed, and waits until the index has dropped it.
func failPod(t testing.TB, pod *corev1.Pod) {
	t.Helper()
	pod = pod.DeepCopy()
	pod.Status.Phase = corev1.PodFailed
	if _, err := apiserver.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	idx := sharedPods(t)
	kubetest.Eventually(t, 30*time.Second, func() error {
		if idx.Get(pod.Namespace, pod.Name) != nil {
			return errors.New("the Failed pod is still indexed")
		}
		return nil
	})
}

// podToken is a token bound to pod for audience istio-ca, made as a user
// would make it (and as the kubelet's projected token is): kubectl create
// token --bound-object-kind Pod.
func podToken(t testing.TB, pod *corev1.Pod) string {
	t.Helper()
	tok, err := podTokenErr(t, pod.Spec.ServiceAccountName, pod.Namespace, pod.Name, string(pod.UID))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func podTokenErr(t testing.TB, sa, ns, name, uid string) (string, error) {
	out, err := apiserver.Kubectl(t, nil, "create", "token", sa, "-n", ns, "--audience", "istio-ca", "--duration", "1h",
		"--bound-object-kind", "Pod", "--bound-object-name", name, "--bound-object-uid", uid)
	if err != nil {
		return "", fmt.Errorf("kubectl create token: %v: %s", err, out)
	}
	for _, l := range strings.Split(out, "\n") { // warnings, if any, come on other lines
		if strings.HasPrefix(l, "ey") {
			return strings.TrimSpace(l), nil
		}
	}
	return "", fmt.Errorf("kubectl create token printed no token: %s", out)
}

// recorder passes requests to an Authorizer and keeps its last error,
// whose whole reason the caller is not told.
type recorder struct {
	server.Authorizer
	mu      sync.Mutex
	lastErr error
}

func (r *recorder) Authorize(ctx context.Context, c *server.Caller, req *server.Request) (id spiffeid.ID, err error) {
	id, err = r.Authorizer.Authorize(ctx, c, req)
	r.mu.Lock()
	r.lastErr = err
	r.mu.Unlock()
	return id, err
}

func (r *recorder) last() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// caFixture is warden's CA in Kubernetes mode, served over gRPC and TLS
// on loopback: SVID renewal, then TokenReview against the test API
// server, then the authorizer given.
type caFixture struct {
	authority *ca.Authority
	addr      string
	roots     *x509.CertPool
	authz     *recorder
	logs      *testkit.Buffer
}

func newCA(t testing.TB, authz server.Authorizer) *caFixture {
	t.Helper()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	f := &caFixture{authority: a, authz: &recorder{Authorizer: authz}, logs: &testkit.Buffer{}}
	srv, err := server.New(server.Config{Signer: a, Authorizer: f.authz,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
		Authenticators: []server.Authenticator{
			&server.SVIDAuthenticator{Bundle: a.Bundle},
			&tokenreview.Authenticator{Client: apiserver.Client, TrustDomain: catest.TrustDomain},
		}})
	if err != nil {
		t.Fatal(err)
	}
	serving := &server.ServingCert{Authority: a, Options: ca.ServingOptions{ID: catest.ID("warden-system", "warden"), DNSNames: []string{"localhost"}}}
	g := grpc.NewServer(server.Credentials(serving))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	f.addr = lis.Addr().String()
	f.roots = x509.NewCertPool()
	f.roots.AddCert(a.Material().Roots[0])
	return f
}

// authorizer is warden's node authorizer over the shared index.
func authorizer(t testing.TB, cluster string, trusted ...nodeauth.Account) *nodeauth.Authorizer {
	return &nodeauth.Authorizer{Trusted: trusted, Cluster: cluster, TrustDomain: catest.TrustDomain, Pods: sharedPods(t)}
}

// client dials the CA, presenting cert when it is not nil (mTLS).
func (f *caFixture) client(t testing.TB, cert *tls.Certificate) pb.IstioCertificateServiceClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.roots, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

// ztunnelCSR is a CSR as ztunnel makes it (src/tls/csr.rs): a new ECDSA
// P-256 key, an empty subject, and one extension, the subjectAltName
// holding the identity as its one URI, marked critical.
func ztunnelCSR(t testing.TB, identity string) (string, crypto.Signer) {
	t.Helper()
	key := catest.Key(t, ca.ECDSAP256)
	u, err := url.Parse(identity)
	if err != nil {
		t.Fatal(err)
	}
	san := catest.SANExtension([]*url.URL{u}, nil, nil, nil)
	san.Critical = true
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{san}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

// ask is ztunnel's CreateCertificate: its own token and cluster in the
// headers, the identity in the metadata's ImpersonatedIdentity (none
// when identity is ""), a CSR for it, and its certificate lifetime.
func ask(ctx context.Context, c pb.IstioCertificateServiceClient, tok, cluster, identity, csr string, ttl int64) (*pb.IstioCertificateResponse, error) {
	var kv []string
	if tok != "" {
		kv = append(kv, "authorization", "Bearer "+tok)
	}
	if cluster != "" {
		kv = append(kv, server.ClusterIDHeader, cluster)
	}
	req := &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: ttl}
	if identity != "" {
		req.Metadata, _ = structpb.NewStruct(map[string]any{server.ImpersonatedIdentity: identity})
	}
	return c.CreateCertificate(metadata.AppendToOutgoingContext(ctx, kv...), req)
}

// checkZtunnelAnswer checks an answer as ztunnel reads it
// (src/identity/caclient.rs, src/tls/certificate.rs): at least two
// elements; each but the last one PEM certificate (ztunnel reads one per
// element); the last the trust bundle; the leaf's first URI SAN the
// identity asked for; and, beyond ztunnel's checks, the leaf holds the
// CSR's key and verifies as an X.509 SVID of that identity up to the
// bundle, and passes zlint.
func checkZtunnelAnswer(t testing.TB, f *caFixture, res *pb.IstioCertificateResponse, key crypto.Signer, identity string) *x509.Certificate {
	t.Helper()
	chain := res.GetCertChain()
	if len(chain) < 2 {
		t.Fatalf("%d elements in cert_chain; ztunnel needs the leaf and the roots", len(chain))
	}
	var certs []*x509.Certificate
	for i, e := range chain[:len(chain)-1] {
		cs, err := ca.ParseCerts([]byte(e))
		if err != nil || len(cs) != 1 {
			t.Fatalf("cert_chain[%d]: %d certificates (%v); ztunnel reads one per element", i, len(cs), err)
		}
		certs = append(certs, cs[0])
	}
	roots, err := ca.ParseCerts([]byte(chain[len(chain)-1]))
	if err != nil || len(roots) != 1 || !roots[0].Equal(f.authority.Material().Roots[0]) {
		t.Fatalf("the last element is not the trust bundle: %d certificates, %v", len(roots), err)
	}
	leaf := certs[0]
	if len(leaf.URIs) == 0 || leaf.URIs[0].String() != identity {
		t.Fatalf("leaf URI SANs %v; ztunnel wants %s first", leaf.URIs, identity)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Fatal("the leaf does not hold the CSR's key")
	}
	id, _, err := x509svid.Verify(certs, f.authority.Bundle())
	if err != nil || id.String() != identity {
		t.Fatalf("x509svid.Verify: %s, %v", id, err)
	}
	catest.Zlint(t, "impersonated leaf", leaf)
	return leaf
}

// ctxT is a context for one call.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
