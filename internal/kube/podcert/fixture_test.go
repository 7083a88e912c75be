package podcert_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

// signer is the name deploy/warden/rbac.yaml grants "sign" on.
const signer = podcert.DefaultSigner

// observed records what the signer reports.
type observed struct {
	mu      sync.Mutex
	issued  int
	denied  map[string]int
	retried map[string]int
}

func (o *observed) Issued(time.Duration) { o.mu.Lock(); o.issued++; o.mu.Unlock() }
func (o *observed) Denied(r string)      { o.mu.Lock(); o.denied[r]++; o.mu.Unlock() }
func (o *observed) Retried(c string)     { o.mu.Lock(); o.retried[c]++; o.mu.Unlock() }

func (o *observed) counts() (issued int, denied, retried map[string]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	denied, retried = map[string]int{}, map[string]int{}
	for k, v := range o.denied {
		denied[k] = v
	}
	for k, v := range o.retried {
		retried[k] = v
	}
	return o.issued, denied, retried
}

// running is a signer running with exactly the deploy RBAC.
type running struct {
	*podcert.Signer
	obs  *observed
	logs *testkit.Buffer
}

// startSigner runs a Signer for a, as warden's service account under
// deploy/warden/rbac.yaml, until the test ends.
func startSigner(t testing.TB, a *ca.Authority, mods ...func(*podcert.Signer)) *running {
	t.Helper()
	cfg, _ := apiserver.Warden(t)
	r := &running{obs: &observed{denied: map[string]int{}, retried: map[string]int{}}, logs: &testkit.Buffer{}}
	r.Signer = &podcert.Signer{Client: kubernetes.NewForConfigOrDie(cfg), Authority: a, Observer: r.obs,
		Log: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, m := range mods {
		m(r.Signer)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("signer: %v\n%s", err, r.logs)
		}
	})
	return r
}

// authority is a CA with a fresh root, signing as warden serve would.
func authority(t testing.TB, mods ...func(*ca.Config)) (*ca.Authority, *ca.Material) {
	t.Helper()
	root := catest.Root(t, ca.CAOptions{})
	return catest.Authority(t, root, mods...), root
}

// keyOf makes a key of a kubelet keyType.
func keyOf(t testing.TB, keyType string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch keyType {
	case "ECDSAP256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSAP384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ECDSAP521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "ED25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	case "RSA2048", "RSA3072", "RSA4096":
		bits := map[string]int{"RSA2048": 2048, "RSA3072": 3072, "RSA4096": 4096}[keyType]
		k, err = rsa.GenerateKey(rand.Reader, bits)
	default:
		t.Fatalf("key type %s", keyType)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// request is a PodCertificateRequest for pod as its kubelet writes it
// (generateName req-, owned by the pod, an empty stub CSR for key), for
// node and the pod's service account, changed by mods.
func request(t testing.TB, pod *corev1.Pod, node *corev1.Node, sa *corev1.ServiceAccount, key crypto.Signer, mods ...func(*certv1.PodCertificateRequest)) *certv1.PodCertificateRequest {
	t.Helper()
	stub, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	r := &certv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, GenerateName: "req-",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}},
		Spec: certv1.PodCertificateRequestSpec{
			SignerName: signer, PodName: pod.Name, PodUID: pod.UID,
			ServiceAccountName: sa.Name, ServiceAccountUID: sa.UID,
			StubPKCS10Request: stub,
		},
	}
	if node != nil {
		r.Spec.NodeName, r.Spec.NodeUID = nodeName(node), node.UID
	}
	for _, m := range mods {
		m(r)
	}
	return r
}

// create creates r with cs (a node's client, or the administrator's).
// NodeRestriction reads the pod from the API server's cache, which may
// not hold a pod created a moment ago: that refusal is retried, as the
// kubelet retries it.
func create(t *testing.T, cs kubernetes.Interface, r *certv1.PodCertificateRequest) *certv1.PodCertificateRequest {
	t.Helper()
	var out *certv1.PodCertificateRequest
	kubetest.Eventually(t, 10*time.Second, func() error {
		var err error
		out, err = cs.CertificatesV1().PodCertificateRequests(r.Namespace).Create(context.Background(), r, metav1.CreateOptions{})
		if err != nil && !strings.Contains(err.Error(), "while retrieving pod") {
			t.Fatalf("create request for pod %s: %v", r.Spec.PodName, err)
		}
		return err
	})
	return out
}

// settled waits for r's terminal condition.
func settled(t *testing.T, r *certv1.PodCertificateRequest, logs fmt.Stringer) (*certv1.PodCertificateRequest, metav1.Condition) {
	t.Helper()
	var got *certv1.PodCertificateRequest
	var cond metav1.Condition
	kubetest.Eventually(t, 20*time.Second, func() error {
		var err error
		got, err = apiserver.Client.CertificatesV1().PodCertificateRequests(r.Namespace).Get(context.Background(), r.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(got.Status.Conditions) == 0 {
			return fmt.Errorf("request %s/%s is pending\nsigner log:\n%s", r.Namespace, r.Name, logs)
		}
		cond = got.Status.Conditions[0]
		return nil
	})
	if len(got.Status.Conditions) != 1 || cond.Status != metav1.ConditionTrue {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	return got, cond
}

// workload is a namespace with service account app and a node.
type workload struct {
	ns   string
	sa   *corev1.ServiceAccount
	node *kubetest.Node
}

func newWorkload(t *testing.T, nodeName string) workload {
	t.Helper()
	ns := apiserver.Namespace(t, "pcr")
	sa := apiserver.ServiceAccount(t, ns, "app")
	return workload{ns: ns, sa: sa, node: apiserver.Node(t, nodeName+"-"+ns)}
}

// pod creates a pod running as app on w's node, mounting a certificate
// volume for signer.
func (w workload) pod(t *testing.T, name string, mods ...func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	return apiserver.Pod(t, w.ns, name, w.sa.Name, w.node.Name, signer, mods...)
}

func nodeName(n *corev1.Node) types.NodeName { return types.NodeName(n.Name) }
