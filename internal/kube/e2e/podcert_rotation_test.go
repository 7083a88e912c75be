package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
)

// issueAsKubelet creates a request for pod as its kubelet would (the
// node's credentials, an empty stub CSR) and returns the issued chain.
func issueAsKubelet(t *testing.T, node *kubetest.Node, pod *corev1.Pod) []*x509.Certificate {
	t.Helper()
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stub, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := apiserver.Client.CoreV1().ServiceAccounts(pod.Namespace).Get(ctx, pod.Spec.ServiceAccountName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := &certv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, GenerateName: "req-"},
		Spec: certv1.PodCertificateRequestSpec{SignerName: podcert.DefaultSigner, PodName: pod.Name, PodUID: pod.UID,
			ServiceAccountName: sa.Name, ServiceAccountUID: sa.UID, NodeName: types.NodeName(node.Name), NodeUID: node.UID, StubPKCS10Request: stub},
	}
	kubetest.Eventually(t, 10*time.Second, func() error { // NodeRestriction's cache may lag the pod
		out, err := node.Client.CertificatesV1().PodCertificateRequests(pod.Namespace).Create(ctx, r, metav1.CreateOptions{})
		if err == nil {
			r = out
		}
		return err
	})
	var chain []*x509.Certificate
	kubetest.Eventually(t, 20*time.Second, func() error {
		got, err := apiserver.Client.CertificatesV1().PodCertificateRequests(r.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(got.Status.Conditions) == 0 || got.Status.Conditions[0].Type != certv1.PodCertificateRequestConditionTypeIssued {
			return fmt.Errorf("request %s: %+v", r.Name, got.Status.Conditions)
		}
		chain, err = ca.ParseCerts([]byte(got.Status.CertificateChain))
		return err
	})
	return chain
}

// TestKubeRotationWithPodCertificates: a root rotation with pod
// certificates, warden as deployed: after publish the ClusterTrustBundle
// holds both roots, and activation waits until it does (here until the
// operator grants warden "update" on a ClusterTrustBundle of another
// trust domain than the one deploy/warden/rbac.yaml names); requests
// after activation are issued under the new root, which the bundle then
// lists first; at retirement the old root leaves it.
func TestKubeRotationWithPodCertificates(t *testing.T) {
	const td = "rotation.example"
	ctx := kubetest.Context(t)
	_, logs := startWardenAsDeployed(t, td, "--rotation-grace", "0s", "--auto-rotate-root", "0")
	name := trustbundle.Name(podcert.DefaultSigner, td)
	node := apiserver.Node(t, fmt.Sprintf("rot-%d", time.Now().UnixNano()%100000))
	ns := apiserver.Namespace(t, "pods")
	pod := apiserver.Pod(t, ns, "db", "db", node.Name, podcert.DefaultSigner)
	ctbRoots := func() []*x509.Certificate {
		b, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		roots, _ := ca.ParseCerts([]byte(b.Spec.TrustBundle))
		return roots
	}
	oldRoots := ctbRoots()
	if len(oldRoots) != 1 {
		t.Fatalf("ClusterTrustBundle holds %d roots", len(oldRoots))
	}
	if chain := issueAsKubelet(t, node, pod); chain[0].CheckSignatureFrom(oldRoots[0]) != nil {
		t.Fatal("a certificate before the rotation is not under the first root")
	}
	rotate := kubeRotate(t, kubetest.WardenNamespace, logs)
	rotate("publish")
	// Warden may create ClusterTrustBundles but update only the one
	// deploy/warden/rbac.yaml names: this one waits, and so does
	// activation, which names it.
	rotate("activate")
	kubetest.Eventually(t, 30*time.Second, func() error {
		if st := rotate("--status"); !strings.Contains(st, "clustertrustbundle "+name) || !strings.Contains(st, "phase: published") {
			return fmt.Errorf("activation does not wait for the ClusterTrustBundle:\n%s", st)
		}
		return nil
	})
	if len(ctbRoots()) != 1 {
		t.Fatal("the ClusterTrustBundle changed without update permission")
	}
	// warden check names the missing rule.
	if _, out := runCheck("--namespace", kubetest.WardenNamespace, "--trust-domain", td); !strings.Contains(out,
		"ERROR   rbac             service account warden-system/warden may not update clustertrustbundles.certificates.k8s.io/"+name+": ClusterTrustBundle "+name+" is not updated, and a root rotation never activates (deploy/warden/rbac.yaml grants it)") {
		t.Errorf("warden check does not name the missing rule:\n%s", out)
	}
	grant := `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: warden-ctb-rotation-example}
rules:
  - apiGroups: ["certificates.k8s.io"]
    resources: ["clustertrustbundles"]
    resourceNames: ["` + name + `"]
    verbs: ["update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: warden-ctb-rotation-example}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: warden-ctb-rotation-example}
subjects: [{kind: ServiceAccount, name: warden, namespace: warden-system}]
`
	if out, err := apiserver.Kubectl(t, []byte(grant), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, []byte(grant), "delete", "-f", "-") })
	var newRoot *x509.Certificate
	kubetest.Eventually(t, 60*time.Second, func() error {
		r := ctbRoots()
		if len(r) != 2 || !r[0].Equal(oldRoots[0]) {
			return fmt.Errorf("the ClusterTrustBundle holds %d roots, want the old then the new", len(r))
		}
		newRoot = r[1]
		return nil
	})
	kubetest.Eventually(t, 60*time.Second, func() error {
		if st := rotate("--status"); !strings.Contains(st, "phase: activated") {
			return fmt.Errorf("not activated:\n%s", st)
		}
		return nil
	})
	next, err := apiserver.Client.CoreV1().Secrets(kubetest.WardenNamespace).Get(ctx, rotationstore.NextCASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nr, _ := ca.ParseCerts(next.Data["root-cert.pem"]); len(nr) != 1 || !nr[0].Equal(newRoot) {
		t.Fatal("the ClusterTrustBundle's second root is not the prepared CA's")
	}
	// After activation: issued under the new root, listed first.
	if chain := issueAsKubelet(t, node, pod); chain[0].CheckSignatureFrom(newRoot) != nil {
		t.Fatal("a certificate after activation is not under the new root")
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if r := ctbRoots(); len(r) != 2 || !r[0].Equal(newRoot) {
			return fmt.Errorf("after activation the ClusterTrustBundle's first root is not the new one")
		}
		return nil
	})
	rotate("--force", "retire")
	kubetest.Eventually(t, 20*time.Second, func() error {
		if r := ctbRoots(); len(r) != 1 || !r[0].Equal(newRoot) {
			return fmt.Errorf("the ClusterTrustBundle holds %d roots after retirement", len(r))
		}
		return nil
	})
	_, out := runCheck("--namespace", kubetest.WardenNamespace, "--trust-domain", td)
	if !strings.Contains(out, "ok      clustertrustbundle ClusterTrustBundle "+name+" holds the trust bundle (1 root(s))") {
		t.Errorf("warden check after the rotation:\n%s", out)
	}
}
