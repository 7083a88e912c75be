package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/fedrelations"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// condition returns the status, reason and message of object name's
// condition of type typ ("" when it has none yet, or is of an older
// generation).
func condition(t *testing.T, c dynamic.Interface, name, typ string) (string, string, string) {
	t.Helper()
	u, err := c.Resource(fedrelations.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range conds {
		m, _ := x.(map[string]any)
		if m["type"] == typ && fmt.Sprint(m["observedGeneration"]) == fmt.Sprint(u.GetGeneration()) {
			return fmt.Sprint(m["status"]), fmt.Sprint(m["reason"]), fmt.Sprint(m["message"])
		}
	}
	return "", "", ""
}

// TestFederationObjects: in Kubernetes mode, a ClusterFederatedTrustDomain
// created while serve runs (with a relationships file that names another
// trust domain) federates the namespaces it lists over central SDS and no
// other; its status says Accepted and BundleFetched; an edit of its
// namespaces is followed; an invalid edit is refused by name in its
// status while the previous generation stays in effect; an object naming
// the file's trust domain is refused and the file's relationship stays;
// deleting the object stops its bundle. The real kubectl applies the
// doc's example and refuses an unknown field.
func TestFederationObjects(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	appNS := apiserver.Namespace(t, "app")
	otherNS := apiserver.Namespace(t, "other")
	apiserver.ServiceAccount(t, appNS, "sleep")
	apiserver.ServiceAccount(t, otherNS, "sleep")
	dyn := dynamic.NewForConfigOrDie(apiserver.Config)
	objs := dyn.Resource(fedrelations.GVR)
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	peerAddr, _ := partnerEndpoint(t, m, "127.0.0.1:0", 1, m.Roots)
	dir := t.TempDir()
	fedFile := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fedFile, []byte(`trustDomains:
- trustDomain: filed.test
  bundleEndpointURL: https://127.0.0.1:1/filed
  bundleEndpointProfile: {type: https_web}
  namespaces: [`+appNS+`]
`), 0o600)
	httpAddr := testkit.FreeAddr(t)
	addr, logs, _ := startServeWith(t, ns, "replica-a", "--federation-file", fedFile, "--federation-min-refresh", "1s", "--http-listen", httpAddr)
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := sec.Data["root-cert.pem"]

	spec := func(namespaces, url string) map[string]any {
		return map[string]any{
			"trustDomain":           "partner.test",
			"bundleEndpointURL":     url,
			"bundleEndpointProfile": map[string]any{"type": "https_spiffe", "endpointSPIFFEID": "spiffe://partner.test/bundle-server"},
			"trustDomainBundle":     string(ca.EncodeCerts(m.Roots...)),
			"namespaces":            []any{namespaces},
		}
	}
	// A policy naming a principal of partner.test: warden check warns
	// about an unknown trust domain until the object federates it.
	policy := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partner-client, namespace: ` + appNS + `}
spec:
  rules: [{from: [{source: {principals: [partner.test/ns/shop/sa/client]}}]}]
`
	if out, err := apiserver.Kubectl(t, []byte(policy), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	const unknownTD = `names trust domain "partner.test", which is neither the mesh's`
	if _, out := runCheck("--namespace", ns, "--federation-file", fedFile); !strings.Contains(out, unknownTD) {
		t.Fatalf("warden check before the object: no warning about partner.test in\n%s", out)
	}

	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": fedrelations.Group + "/" + fedrelations.Version, "kind": fedrelations.Kind,
		"metadata": map[string]any{"name": "partner"},
		"spec":     spec(appNS, "https://"+peerAddr+"/"),
	}}
	if _, err := objs.Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = objs.Delete(context.Background(), "partner", metav1.DeleteOptions{}) })

	gets := func(ns string) error {
		got, err := sdsForeign(t, addr, rootPEM, ns, "sleep")
		if err != nil {
			return err
		}
		if !ca.SameRoots(got, m.Roots) {
			return fmt.Errorf("%s: %d partner.test roots, want the peer's", ns, len(got))
		}
		return nil
	}
	denied := func(ns string) error {
		_, err := sdsForeign(t, addr, rootPEM, ns, "sleep")
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("%s: spiffe://partner.test: %v, want PermissionDenied", ns, err)
		}
		return nil
	}
	kubetest.Eventually(t, 30*time.Second, func() error { return gets(appNS) })
	if err := denied(otherNS); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		if s, r, msg := condition(t, dyn, "partner", fedrelations.Accepted); s != "True" || r != fedrelations.ReasonAccepted || !strings.Contains(msg, "namespaces "+appNS) {
			return fmt.Errorf("Accepted: %s %s %q", s, r, msg)
		}
		if s, r, msg := condition(t, dyn, "partner", fedrelations.BundleFetched); s != "True" || r != fedrelations.ReasonFetched {
			return fmt.Errorf("BundleFetched: %s %s %q", s, r, msg)
		}
		return nil
	})
	out, err := apiserver.Kubectl(t, nil, "get", "clusterfederatedtrustdomains")
	if err != nil || !strings.Contains(out, "partner.test") || !strings.Contains(out, "https_spiffe") || !strings.Contains(out, "True") {
		t.Errorf("kubectl get clusterfederatedtrustdomains: %v\n%s", err, out)
	}

	// Offline, policy explain reads the objects as kubectl writes them:
	// the object's namespace takes a partner.test peer (the policy
	// decides), another namespace's handshake refuses it.
	dump, err := apiserver.Kubectl(t, nil, "get", "clusterfederatedtrustdomains", "-o", "yaml")
	if err != nil {
		t.Fatalf("kubectl get -o yaml: %v\n%s", err, dump)
	}
	objFile, polDir := filepath.Join(dir, "objects.yaml"), filepath.Join(dir, "policy")
	os.WriteFile(objFile, []byte(dump), 0o600)
	os.MkdirAll(polDir, 0o755)
	os.WriteFile(filepath.Join(polDir, "p.yaml"), []byte(policy), 0o644)
	explain := func(namespace string) string {
		var out bytes.Buffer
		app.Run(context.Background(), []string{"policy", "explain", "-f", polDir, "--federation-file", objFile, "--namespace", namespace,
			"--source-principal", "spiffe://partner.test/ns/shop/sa/client", "--method", "GET", "--path", "/x"}, &out, &out)
		return out.String()
	}
	if out := explain(appNS); !strings.HasPrefix(out, "ALLOW: allowed by ns["+appNS+"]-policy[partner-client]-rule[0]") {
		t.Errorf("policy explain with the objects kubectl wrote, namespace %s:\n%s", appNS, out)
	}
	if out := explain(otherNS); !strings.HasPrefix(out, "DENY: the handshake refuses spiffe://partner.test/ns/shop/sa/client") {
		t.Errorf("policy explain with the objects kubectl wrote, namespace %s:\n%s", otherNS, out)
	}

	// warden check knows the object's trust domain (no warning for the
	// policy) and reports the object.
	if _, out := runCheck("--namespace", ns, "--federation-file", fedFile); strings.Contains(out, unknownTD) || !strings.Contains(out, "ClusterFederatedTrustDomain partner: partner.test for namespaces "+appNS) {
		t.Errorf("warden check with the object in effect:\n%s", out)
	}

	// The namespaces edited: the other namespace now, the first no more.
	update := func(mutate func(u *unstructured.Unstructured)) {
		t.Helper()
		kubetest.Eventually(t, 10*time.Second, func() error {
			u, err := objs.Get(context.Background(), "partner", metav1.GetOptions{})
			if err != nil {
				return err
			}
			mutate(u)
			_, err = objs.Update(context.Background(), u, metav1.UpdateOptions{})
			return err
		})
	}
	update(func(u *unstructured.Unstructured) { u.Object["spec"] = spec(otherNS, "https://"+peerAddr+"/") })
	kubetest.Eventually(t, 30*time.Second, func() error { return gets(otherNS) })
	kubetest.Eventually(t, 30*time.Second, func() error { return denied(appNS) })

	// An invalid edit (the schema takes it, warden does not): refused by
	// name in the status; generation 2 stays in effect.
	update(func(u *unstructured.Unstructured) { u.Object["spec"] = spec(appNS, "http://"+peerAddr+"/") })
	kubetest.Eventually(t, 30*time.Second, func() error {
		s, r, msg := condition(t, dyn, "partner", fedrelations.Accepted)
		want := `refused: bundleEndpointURL: "http://` + peerAddr + `/": a bundle endpoint URL is https; generation 2 stays in effect (partner.test's bundle from https://` + peerAddr + `/ (https_spiffe) for namespaces ` + otherNS + `) until the spec is fixed`
		if s != "False" || r != fedrelations.ReasonInvalid || msg != want {
			return fmt.Errorf("Accepted: %s %s %q, want False Invalid %q", s, r, msg, want)
		}
		return nil
	})
	if err := gets(otherNS); err != nil {
		t.Fatalf("after an invalid edit: %v", err)
	}
	if err := denied(appNS); err != nil {
		t.Fatalf("after an invalid edit: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="federation: ClusterFederatedTrustDomain refused; its previous version stays in effect" name=partner generation=3 inEffect=2`) {
		t.Errorf("the refusal is not logged by name:\n%s", logs.String())
	}

	// An object naming the file's trust domain: refused by name, the
	// file's relationship stays.
	dup := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": fedrelations.Group + "/" + fedrelations.Version, "kind": fedrelations.Kind,
		"metadata": map[string]any{"name": "filed-again"},
		"spec": map[string]any{"trustDomain": "filed.test", "bundleEndpointURL": "https://127.0.0.1:2/other",
			"bundleEndpointProfile": map[string]any{"type": "https_web"}, "namespaces": []any{"*"}},
	}}
	if _, err := objs.Create(context.Background(), dup, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = objs.Delete(context.Background(), "filed-again", metav1.DeleteOptions{}) })
	kubetest.Eventually(t, 30*time.Second, func() error {
		s, r, msg := condition(t, dyn, "filed-again", fedrelations.Accepted)
		want := "refused: trustDomain filed.test is already named by the federation file: one relationship per trust domain; delete this object or remove the other; nothing of this object is in effect: fix the spec"
		if s != "False" || r != fedrelations.ReasonConflict || msg != want {
			return fmt.Errorf("Accepted: %s %s %q, want False Conflict %q", s, r, msg, want)
		}
		return nil
	})
	if _, out := runCheck("--namespace", ns, "--federation-file", fedFile); !strings.Contains(out, "ClusterFederatedTrustDomain filed-again is refused: trustDomain filed.test is already named by the federation file") {
		t.Errorf("warden check does not report the refused object:\n%s", out)
	}
	if urls := debugFederation(t, httpAddr); urls["filed.test"] != "https://127.0.0.1:1/filed" || urls["partner.test"] != "https://"+peerAddr+"/" || len(urls) != 2 {
		t.Errorf("/debug/federation: %v, want the file's filed.test and the object's partner.test", urls)
	}

	// Deleted: the bundle is served no more.
	if err := objs.Delete(context.Background(), "partner", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		_, err := sdsForeign(t, addr, rootPEM, otherNS, "sleep")
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("after delete: spiffe://partner.test: %v, want PermissionDenied", err)
		}
		return nil
	})

	// The doc's example, applied by kubectl as an operator would; an
	// unknown field is refused by the API server's schema, SPIRE's
	// className by the CRD's rule, each by name.
	example := docExample(t)
	if out, err := apiserver.Kubectl(t, []byte(example), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply the doc's example: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, []byte(example), "delete", "-f", "-") })
	kubetest.Eventually(t, 30*time.Second, func() error {
		if s, _, msg := condition(t, dyn, "partner-example", fedrelations.Accepted); s != "True" {
			return fmt.Errorf("the doc's example: Accepted %s %q", s, msg)
		}
		return nil
	})
	bad := strings.Replace(example, "name: partner-example", "name: unknown-field", 1) + "  federatesWith: [partner.example]\n"
	if out, err := apiserver.Kubectl(t, []byte(bad), "apply", "-f", "-"); err == nil || !strings.Contains(out, `unknown field "spec.federatesWith"`) {
		t.Errorf("kubectl apply with an unknown field: %v\n%s", err, out)
	}
	bad = strings.Replace(example, "name: partner-example", "name: classname", 1) + "  className: spire-mgmt\n"
	if out, err := apiserver.Kubectl(t, []byte(bad), "apply", "-f", "-"); err == nil || !strings.Contains(out, "className: warden has no controller classes") {
		t.Errorf("kubectl apply with className: %v\n%s", err, out)
	}
}

// debugFederation is serve's /debug/federation: trust domain -> URL.
func debugFederation(t *testing.T, httpAddr string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/debug/federation")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sts []struct {
		TrustDomain string `json:"trustDomain"`
		URL         string `json:"url"`
	}
	if err := json.Unmarshal(b, &sts); err != nil {
		t.Fatalf("/debug/federation: %v: %s", err, b)
	}
	out := map[string]string{}
	for _, s := range sts {
		out[s.TrustDomain] = s.URL
	}
	return out
}

// docExample is the ClusterFederatedTrustDomain example of
// docs/federation.md (the yaml block that declares the kind).
func docExample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kubetest.RepoRoot(), "docs", "federation.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(b), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.Contains(block, "kind: ClusterFederatedTrustDomain") {
			return block
		}
	}
	t.Fatal("docs/federation.md has no ClusterFederatedTrustDomain example")
	return ""
}

// TestFederationObjectsWithoutFile: Kubernetes mode without
// --federation-file and without any object at start still wires
// federation, so an object created later federates its namespace at once,
// with no restart.
func TestFederationObjectsWithoutFile(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	appNS := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, appNS, "sleep")
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	peerAddr, _ := partnerEndpoint(t, m, "127.0.0.1:0", 1, m.Roots)
	addr, _, _ := startServeWith(t, ns, "replica-a", "--federation-min-refresh", "1s")
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs := dynamic.NewForConfigOrDie(apiserver.Config).Resource(fedrelations.GVR)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": fedrelations.Group + "/" + fedrelations.Version, "kind": fedrelations.Kind,
		"metadata": map[string]any{"name": "partner-later"},
		"spec": map[string]any{
			"trustDomain":           "partner.test",
			"bundleEndpointURL":     "https://" + peerAddr + "/",
			"bundleEndpointProfile": map[string]any{"type": "https_spiffe", "endpointSPIFFEID": "spiffe://partner.test/bundle-server"},
			"trustDomainBundle":     string(ca.EncodeCerts(m.Roots...)),
			"namespaces":            []any{appNS},
		},
	}}
	if _, err := objs.Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = objs.Delete(context.Background(), "partner-later", metav1.DeleteOptions{}) })
	kubetest.Eventually(t, 30*time.Second, func() error {
		got, err := sdsForeign(t, addr, sec.Data["root-cert.pem"], appNS, "sleep")
		if err != nil {
			return err
		}
		if !ca.SameRoots(got, m.Roots) {
			return fmt.Errorf("%d partner.test roots, want the peer's", len(got))
		}
		return nil
	})
}
