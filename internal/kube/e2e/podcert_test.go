package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
	"github.com/wardenmesh/warden/internal/testkit"
)

// podCertClient is the kubelet's own pod-certificate client
// (k8s.io/kubernetes/pkg/kubelet/podcertificate), built by
// hack/podcert-client.sh.
var podCertClient = testkit.Tool{Env: "WARDEN_PODCERT_CLIENT", Script: "podcert-client.sh", What: "the kubelet's pod-certificate client"}

// kubeletEvent is a line of podcertclient's output.
type kubeletEvent struct {
	Event          string    `json:"event"`
	N              int       `json:"n"`
	Bundle         string    `json:"bundle"`
	Request        string    `json:"request"`
	BeginRefreshAt time.Time `json:"beginRefreshAt"`
	NotAfter       time.Time `json:"notAfter"`
	Error          string    `json:"error"`
	Message        string    `json:"message"`
}

// runKubelet runs the kubelet's pod-certificate client for pod on node
// through refreshes refreshes, and returns what it reported.
func runKubelet(t *testing.T, node *kubetest.Node, pod *corev1.Pod, refreshes int) []kubeletEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, podCertClient.Path(t), "--kubeconfig", node.Kubeconfig, "--node", node.Name,
		"--namespace", pod.Namespace, "--pod", pod.Name, "--refreshes", fmt.Sprint(refreshes), "--out", t.TempDir())
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("podcertclient: %v\n%s\n%s", err, stdout, stderr.String())
	}
	var evs []kubeletEvent
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		var e kubeletEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("podcertclient wrote %q: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	return evs
}

// credentialBundle reads a bundle the kubelet wrote: its PKCS#8 key,
// then the chain.
func credentialBundle(t *testing.T, file string) (crypto.Signer, []*x509.Certificate) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s does not start with a PRIVATE KEY block", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.ParseCerts(rest)
	if err != nil || len(chain) == 0 {
		t.Fatalf("%s: chain %v", file, err)
	}
	return k.(crypto.Signer), chain
}

// startWardenAsDeployed runs warden serve in warden-system with the
// credentials of deploy/warden/rbac.yaml's service account, nothing
// more, and waits for its ClusterTrustBundle. A bundle left by the
// installs of other tests (in their own namespaces, with an
// administrator's credentials) is removed first, as the owner guard asks.
func startWardenAsDeployed(t *testing.T, td string, extra ...string) (httpAddr string, logs *testkit.Buffer) {
	t.Helper()
	_, httpAddr, logs = startWardenAsDeployedAt(t, td, extra...)
	return httpAddr, logs
}

// startWardenAsDeployedAt is startWardenAsDeployed, with the CA port.
func startWardenAsDeployedAt(t *testing.T, td string, extra ...string) (addr, httpAddr string, logs *testkit.Buffer) {
	t.Helper()
	ctx := context.Background()
	name := trustbundle.Name(podcert.DefaultSigner, td)
	if err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	_, kubeconfig := apiserver.Warden(t)
	httpAddr = testkit.FreeAddr(t)
	addr, logs, _ = startServeWith(t, kubetest.WardenNamespace, "replica-a", append([]string{"--kubeconfig", kubeconfig, "--http-listen", httpAddr, "--trust-domain", td}, extra...)...)
	kubetest.Eventually(t, 30*time.Second, func() error {
		b, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("%v\n%s", err, logs)
		}
		if b.Annotations["warden.io/owner"] != kubetest.WardenNamespace {
			return fmt.Errorf("ClusterTrustBundle %s is %s's", name, b.Annotations["warden.io/owner"])
		}
		return nil
	})
	return addr, httpAddr, logs
}

// trustBundle is the roots of warden's ClusterTrustBundle for trust
// domain td, as a pod's clusterTrustBundle volume selects them (signer
// and label).
func trustBundle(t *testing.T, signer, td string) *x509bundle.Bundle {
	t.Helper()
	list, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().List(context.Background(), metav1.ListOptions{
		FieldSelector: "spec.signerName=" + signer, LabelSelector: trustbundle.TrustDomainLabel + "=" + td})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("ClusterTrustBundles for %s in %s: %d (%v)", signer, td, len(list.Items), err)
	}
	roots, err := ca.ParseCerts([]byte(list.Items[0].Spec.TrustBundle))
	if err != nil {
		t.Fatal(err)
	}
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), roots)
}

// TestKubeletPodCertificates: warden serve, as deployed (deploy/warden's
// RBAC, nothing more), against an API server that holds nodes to what a
// kubelet may do, and the kubelet's own pod-certificate code
// (k8s.io/kubernetes/pkg/kubelet/podcertificate's IssuingManager) as the
// client: a pod with a podCertificate volume gets a credential bundle
// whose chain verifies against the ClusterTrustBundle and names the pod's
// SPIFFE ID, and at beginRefreshAt (half its hour) the kubelet asks again
// and gets a new key and certificate. A volume with an annotation warden
// does not know is denied, and the kubelet gives it up with the reason.
func TestKubeletPodCertificates(t *testing.T) {
	httpAddr, logs := startWardenAsDeployed(t, "cluster.local")
	node := apiserver.Node(t, "kubelet-"+fmt.Sprint(time.Now().UnixNano()%100000))
	ns := apiserver.Namespace(t, "pods")
	hour := int32(3600)
	pod := apiserver.Pod(t, ns, "grpc-server", "server", node.Name, podcert.DefaultSigner, func(p *corev1.Pod) {
		p.Spec.Volumes[0] = kubetest.CertificateVolume(podcert.DefaultSigner, map[string]string{trustbundle.TrustDomainLabel: "cluster.local"})
		p.Spec.Volumes[0].Projected.Sources[0].PodCertificate.MaxExpirationSeconds = &hour
	})
	evs := runKubelet(t, node, pod, 1)
	var issued []kubeletEvent
	refreshed := false
	for _, e := range evs {
		switch e.Event {
		case "issued":
			issued = append(issued, e)
		case "refresh":
			refreshed = true
		case "denied":
			t.Fatalf("the kubelet was denied: %s\n%s", e.Error, logs)
		}
	}
	if len(issued) != 2 || !refreshed {
		t.Fatalf("kubelet events %+v", evs)
	}
	td := trustBundle(t, podcert.DefaultSigner, "cluster.local")
	want := spiffeid.RequireFromSegments(td.TrustDomain(), "ns", ns, "sa", "server")
	var leaves []*x509.Certificate
	var keys []crypto.Signer
	for _, e := range issued {
		key, chain := credentialBundle(t, e.Bundle)
		id, _, err := x509svid.Verify(chain, td)
		if err != nil || id != want {
			t.Fatalf("bundle %d: %s %v, want %s", e.N, id, err, want)
		}
		leaf := chain[0]
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
			t.Errorf("bundle %d: the key is not the leaf's", e.N)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life != time.Hour {
			t.Errorf("bundle %d: lifetime %s, want the volume's maxExpirationSeconds, an hour", e.N, life)
		}
		if want := leaf.NotBefore.Add(30 * time.Minute); !e.BeginRefreshAt.Equal(want) {
			t.Errorf("bundle %d: beginRefreshAt %s, want %s", e.N, e.BeginRefreshAt, want)
		}
		leaves, keys = append(leaves, leaf), append(keys, key)
	}
	if issued[0].Request == issued[1].Request || leaves[0].SerialNumber.Cmp(leaves[1].SerialNumber) == 0 ||
		keys[0].Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(keys[1].Public()) {
		t.Error("the refresh did not bring a new request, key and certificate")
	}
	reqs, err := apiserver.Client.CertificatesV1().PodCertificateRequests(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil || len(reqs.Items) != 2 {
		t.Fatalf("requests in %s: %d (%v)", ns, len(reqs.Items), err)
	}

	// A volume asking for what warden does not honour: the kubelet's
	// state machine takes the denial as final for that volume.
	annotated := apiserver.Pod(t, ns, "annotated", "server", node.Name, podcert.DefaultSigner, func(p *corev1.Pod) {
		p.Spec.Volumes[0].Projected.Sources[0].PodCertificate.UserAnnotations = map[string]string{"example.com/dns-names": "db.example.com"}
	})
	evs = runKubelet(t, node, annotated, 0)
	denied := false
	for _, e := range evs {
		if e.Event == "denied" && strings.Contains(e.Error, `reason="InvalidUnverifiedUserAnnotations"`) && strings.Contains(e.Error, "example.com/dns-names") {
			denied = true
		}
	}
	if !denied {
		t.Fatalf("kubelet events %+v", evs)
	}
	page := testkit.Scrape(t, "http://"+httpAddr+"/metrics")
	if n := testkit.MetricValue(t, page, "warden_podcert_issued_total"); n < 2 {
		t.Errorf("warden_podcert_issued_total %v", n)
	}
	if n := testkit.MetricValue(t, page, `warden_podcert_denied_total{reason="InvalidUnverifiedUserAnnotations"}`); n != 1 {
		t.Errorf("denied{InvalidUnverifiedUserAnnotations} %v", n)
	}
	if n := testkit.MetricValue(t, page, "warden_podcert_pending"); n != 0 {
		t.Errorf("warden_podcert_pending %v", n)
	}

	// The deploy RBAC is enough for everything serve did.
	if strings.Contains(strings.ToLower(logs.String()), "forbidden") {
		t.Errorf("warden, as deployed, was refused something:\n%s", logs)
	}

	// warden check sees the ClusterTrustBundle and the requests.
	_, out := runCheck("--namespace", kubetest.WardenNamespace)
	for _, want := range []string{
		"ok      rbac             service account warden-system/warden may do the ",
		"ok      clustertrustbundle ClusterTrustBundle wardenmesh.io:spiffe:cluster.local holds the trust bundle (1 root(s))",
		"WARNING pod-certificates 1 pod certificate requests for wardenmesh.io/spiffe denied, InvalidUnverifiedUserAnnotations: " + ns + "/",
		"ok      pod-certificates ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("warden check: no %q in\n%s", want, out)
		}
	}
}
