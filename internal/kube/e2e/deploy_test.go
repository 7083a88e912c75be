package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDeployManifests renders deploy/ with kustomize and has the real API
// server validate every object (server-side dry run).
func TestDeployManifests(t *testing.T) {
	rendered, err := apiserver.Kubectl(t, nil, "kustomize", filepath.Join(kubetest.RepoRoot(), "deploy"))
	if err != nil {
		t.Fatalf("kubectl kustomize deploy: %v\n%s", err, rendered)
	}
	for _, want := range []string{"kind: Deployment", "replicas: 2", "kind: ClusterRole", "kind: Service", "port: 15012", "kind: Namespace", "name: warden-system"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("rendered manifests lack %q", want)
		}
	}
	_, err = apiserver.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "warden-system"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	out, err := apiserver.Kubectl(t, []byte(rendered), "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if !strings.Contains(out, "deployment.apps/warden created (server dry run)") && !strings.Contains(out, "deployment.apps/warden configured (server dry run)") {
		t.Fatalf("unexpected kubectl output:\n%s", out)
	}
}

// TestDeployRBACCoversWhatWardenReads applies deploy/'s RBAC for real and
// asks the API server, as kubectl auth can-i would, whether warden's
// service account may do what every replica does: watch the service
// registry and the mesh configuration cluster-wide, review tokens, keep
// its CA Secret and Lease, sign pod certificates for its own signer and
// keep its ClusterTrustBundle. It may not read arbitrary Secrets in its
// own namespace by name outside the rules, nor write Services, nor sign
// for another signer.
func TestDeployRBACCoversWhatWardenReads(t *testing.T) {
	_, err := apiserver.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "warden-system"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if out, err := apiserver.Kubectl(t, nil, "apply", "-n", "warden-system", "-f", filepath.Join(kubetest.RepoRoot(), "deploy", "warden", "rbac.yaml")); err != nil {
		t.Fatalf("kubectl apply rbac.yaml: %v\n%s", err, out)
	}
	as := "--as=system:serviceaccount:warden-system:warden"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"watch", "services", "-A"}, "yes"},
		{[]string{"list", "pods", "-A"}, "yes"},
		{[]string{"watch", "pods", "-A"}, "yes"}, // node authorization's index
		{[]string{"watch", "endpointslices.discovery.k8s.io", "-A"}, "yes"},
		{[]string{"watch", "virtualservices.networking.istio.io", "-A"}, "yes"},
		{[]string{"list", "serviceentries.networking.istio.io", "-A"}, "yes"},
		{[]string{"watch", "authorizationpolicies.security.istio.io", "-A"}, "yes"},
		{[]string{"create", "tokenreviews.authentication.k8s.io"}, "yes"},
		{[]string{"create", "subjectaccessreviews.authorization.k8s.io"}, "yes"},
		{[]string{"update", "leases.coordination.k8s.io/warden-leader", "-n", "warden-system"}, "yes"},
		{[]string{"get", "secrets/istio-ca-secret", "-n", "warden-system"}, "yes"},
		{[]string{"create", "configmaps", "-n", "warden-system"}, "yes"},
		{[]string{"update", "configmaps/warden-ca-source", "-n", "warden-system"}, "yes"},
		{[]string{"update", "configmaps/istio-ca-root-cert", "-n", "default"}, "yes"},
		{[]string{"update", "configmaps/other", "-n", "default"}, "no"},
		{[]string{"create", "services", "-n", "default"}, "no"},
		{[]string{"delete", "pods", "-n", "default"}, "no"},
		{[]string{"update", "endpointslices.discovery.k8s.io", "-n", "default"}, "no"},
		// Gateway credentials are read; no Secret is written outside
		// warden's namespace unless istio.<sa> Secrets are on (below).
		{[]string{"watch", "secrets", "-n", "default"}, "yes"},
		{[]string{"delete", "secrets", "-n", "kube-system"}, "no"},
		{[]string{"create", "secrets", "-n", "default"}, "no"},
		{[]string{"update", "secrets/istio.sleep", "-n", "default"}, "no"},
		// Pod certificates: requests read everywhere, their status
		// written, for warden's signer only; its ClusterTrustBundle; the
		// objects a request is checked against.
		{[]string{"watch", "podcertificaterequests.certificates.k8s.io", "-A"}, "yes"},
		{[]string{"update", "podcertificaterequests.certificates.k8s.io", "--subresource=status", "-n", "default"}, "yes"},
		{[]string{"update", "podcertificaterequests.certificates.k8s.io", "-n", "default"}, "no"},
		{[]string{"create", "podcertificaterequests.certificates.k8s.io", "-n", "default"}, "no"},
		{[]string{"delete", "podcertificaterequests.certificates.k8s.io", "-n", "default"}, "no"},
		{[]string{"watch", "clustertrustbundles.certificates.k8s.io"}, "yes"},
		{[]string{"create", "clustertrustbundles.certificates.k8s.io"}, "yes"},
		{[]string{"update", "clustertrustbundles.certificates.k8s.io/wardenmesh.io:spiffe:cluster.local"}, "yes"},
		{[]string{"update", "clustertrustbundles.certificates.k8s.io/example.com:other:bundle"}, "no"},
		{[]string{"delete", "clustertrustbundles.certificates.k8s.io/wardenmesh.io:spiffe:cluster.local"}, "no"},
		{[]string{"watch", "serviceaccounts", "-A"}, "yes"},
		{[]string{"watch", "nodes"}, "yes"},
		{[]string{"update", "nodes"}, "no"},
		{[]string{"create", "certificatesigningrequests.certificates.k8s.io"}, "no"},
	} {
		out, _ := apiserver.Kubectl(t, nil, append([]string{"auth", "can-i", as}, c.args...)...) // exit 1 means "no"
		lines := strings.Split(strings.TrimSpace(out), "\n")                                     // warnings come first
		if got := lines[len(lines)-1]; got != c.want {
			t.Errorf("can-i %s: %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}
	// Signer names hold a '/', which kubectl auth can-i cannot take in
	// a resource name: the same question as a SubjectAccessReview.
	for _, c := range []struct {
		verb, signer string
		want         bool
	}{
		{"sign", "wardenmesh.io/spiffe", true},
		{"attest", "wardenmesh.io/spiffe", true},
		{"approve", "wardenmesh.io/spiffe", false},
		{"sign", "kubernetes.io/kube-apiserver-client", false},
		{"sign", "example.com/other", false},
		{"attest", "example.com/other", false},
	} {
		sar, err := apiserver.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:               "system:serviceaccount:warden-system:warden",
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:warden-system", "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Group: "certificates.k8s.io", Resource: "signers", Verb: c.verb, Name: c.signer},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != c.want {
			t.Errorf("may %s for signer %s: %v, want %v", c.verb, c.signer, sar.Status.Allowed, c.want)
		}
	}
}

// TestDeployIstiodCompat renders deploy/istiod-compat (warden in istiod's
// place for an existing Istio data plane) and has the API server validate
// it: the istiod Service in istio-system points at warden, and warden
// serves under istiod's names.
func TestDeployIstiodCompat(t *testing.T) {
	rendered, err := apiserver.Kubectl(t, nil, "kustomize", filepath.Join(kubetest.RepoRoot(), "deploy", "istiod-compat"))
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/istiod-compat: %v\n%s", err, rendered)
	}
	for _, want := range []string{"name: istiod\n  namespace: istio-system", "externalName: warden.warden-system.svc.cluster.local", "- --istiod-names", "kind: Deployment",
		"- --webhook-listen=0.0.0.0:15017", "  - name: https-webhook\n    port: 443\n    targetPort: 15017", "name: warden-webhooks"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("rendered manifests lack %q", want)
		}
	}
	for _, ns := range []string{"warden-system", "istio-system"} {
		_, err = apiserver.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	out, err := apiserver.Kubectl(t, []byte(rendered), "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if !strings.Contains(out, "service/istiod") {
		t.Fatalf("unexpected kubectl output:\n%s", out)
	}
	// The webhooks' RBAC, for real: update Istio's validating webhook
	// configurations, read (not write) the mutating ones.
	rbac := filepath.Join(kubetest.RepoRoot(), "deploy", "istiod-compat", "rbac.yaml")
	if out, err := apiserver.Kubectl(t, nil, "apply", "-f", rbac); err != nil {
		t.Fatalf("kubectl apply rbac.yaml: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, nil, "delete", "-f", rbac, "--ignore-not-found") })
	as := "--as=system:serviceaccount:warden-system:warden"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"watch", "validatingwebhookconfigurations.admissionregistration.k8s.io"}, "yes"},
		{[]string{"update", "validatingwebhookconfigurations.admissionregistration.k8s.io/istiod-default-validator"}, "yes"},
		{[]string{"delete", "validatingwebhookconfigurations.admissionregistration.k8s.io"}, "no"},
		{[]string{"create", "validatingwebhookconfigurations.admissionregistration.k8s.io"}, "no"},
		{[]string{"list", "mutatingwebhookconfigurations.admissionregistration.k8s.io"}, "yes"},
		{[]string{"update", "mutatingwebhookconfigurations.admissionregistration.k8s.io"}, "no"},
	} {
		out, _ := apiserver.Kubectl(t, nil, append([]string{"auth", "can-i", as}, c.args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := lines[len(lines)-1]; got != c.want {
			t.Errorf("can-i %s: %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}
}

// TestDeployOverlays: removing warden removes nothing of the mesh.
// deploy/istiod-compat and deploy/warden carry no Namespace and no
// CustomResourceDefinition (istio-system and the Istio CRDs belong to
// Istio's install, warden-system holds the adopted CA), and a server dry
// run of deleting them names neither; deploy/ (a fresh install) carries
// both, deploy/namespace the namespace alone.
func TestDeployOverlays(t *testing.T) {
	kinds := func(dir string) string {
		t.Helper()
		out, err := apiserver.Kubectl(t, nil, "kustomize", filepath.Join(kubetest.RepoRoot(), "deploy", dir))
		if err != nil {
			t.Fatalf("kubectl kustomize deploy/%s: %v\n%s", dir, err, out)
		}
		var ks []string
		for _, l := range strings.Split(out, "\n") {
			if k, ok := strings.CutPrefix(l, "kind: "); ok {
				ks = append(ks, k)
			}
		}
		return strings.Join(ks, ",")
	}
	for _, dir := range []string{"istiod-compat", "warden"} {
		if k := kinds(dir); strings.Contains(k, "Namespace") || strings.Contains(k, "CustomResourceDefinition") || !strings.Contains(k, "Deployment") {
			t.Errorf("deploy/%s carries %s: deleting it would delete what Istio's install or warden's namespace holds", dir, k)
		}
	}
	if k := kinds(""); !strings.Contains(k, "Namespace") || !strings.Contains(k, "CustomResourceDefinition") {
		t.Errorf("deploy/ (a fresh install) carries %s", k)
	}
	if k := kinds("namespace"); k != "Namespace" {
		t.Errorf("deploy/namespace carries %s", k)
	}
	for _, ns := range []string{"warden-system", "istio-system"} {
		_, err := apiserver.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	// Installed for real (no controller runs it here), then a server dry
	// run of the uninstall the docs give.
	compat := filepath.Join(kubetest.RepoRoot(), "deploy", "istiod-compat")
	out, err := apiserver.Kubectl(t, nil, "apply", "-k", compat)
	if err != nil {
		t.Fatalf("kubectl apply -k deploy/istiod-compat: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, nil, "delete", "-k", compat, "--ignore-not-found", "--wait=false") })
	out, err = apiserver.Kubectl(t, nil, "delete", "-k", compat, "--dry-run=server")
	if err != nil || !strings.Contains(out, "deployment.apps \"warden\" deleted") {
		t.Fatalf("kubectl delete -k deploy/istiod-compat --dry-run=server: %v\n%s", err, out)
	}
	for _, never := range []string{"namespace", "customresourcedefinition"} {
		if strings.Contains(out, never) {
			t.Errorf("deleting deploy/istiod-compat would delete a %s:\n%s", never, out)
		}
	}
}

// TestDeploySASecretsOverlay: the istio.<sa> Secrets are opt-in: only
// deploy/sa-secrets runs warden with --sa-secrets and grants it writing
// Secrets in every namespace, which deploy/warden does not
// (TestDeployRBACCoversWhatWardenReads).
func TestDeploySASecretsOverlay(t *testing.T) {
	rendered, err := apiserver.Kubectl(t, nil, "kustomize", filepath.Join(kubetest.RepoRoot(), "deploy", "sa-secrets"))
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/sa-secrets: %v\n%s", err, rendered)
	}
	if !strings.Contains(rendered, "- --sa-secrets") || !strings.Contains(rendered, "name: warden-sa-secrets") {
		t.Fatalf("deploy/sa-secrets does not run --sa-secrets with its ClusterRole:\n%s", rendered)
	}
	base, err := apiserver.Kubectl(t, nil, "kustomize", filepath.Join(kubetest.RepoRoot(), "deploy", "warden"))
	if err != nil || strings.Contains(base, "--sa-secrets") {
		t.Fatalf("deploy/warden runs --sa-secrets (%v)", err)
	}
	overlay := filepath.Join(kubetest.RepoRoot(), "deploy", "sa-secrets", "rbac.yaml")
	if out, err := apiserver.Kubectl(t, nil, "apply", "-f", overlay); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, nil, "delete", "-f", overlay, "--ignore-not-found") })
	as := "--as=system:serviceaccount:warden-system:warden"
	for _, args := range [][]string{{"create", "secrets", "-n", "default"}, {"update", "secrets", "-n", "default"}, {"delete", "secrets", "-n", "default"}, {"watch", "serviceaccounts", "-A"}} {
		out, _ := apiserver.Kubectl(t, nil, append([]string{"auth", "can-i", as}, args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if got := lines[len(lines)-1]; got != "yes" {
			t.Errorf("with deploy/sa-secrets, can-i %s: %q, want yes", strings.Join(args, " "), got)
		}
	}
}
