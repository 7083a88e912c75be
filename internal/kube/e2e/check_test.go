package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
)

func runCheck(args ...string) (int, string) {
	var out bytes.Buffer
	code := app.Run(context.Background(), append([]string{"check", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig}, args...), &out, &out)
	return code, out.String()
}

// TestCheckKubernetes: warden check against a real API server: the CA
// Secret, the bundle ConfigMaps and the istio.<sa> Secrets of a running
// install are ok; with the install stopped, a new namespace without the
// ConfigMap and an object warden's validation refuses are errors (exit 1).
func TestCheckKubernetes(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	app1 := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, app1, "sleep")
	_, logs, stop := startServeWith(t, ns, "replica-a", "--sa-secrets")
	ctx := context.Background()
	kubetest.Eventually(t, 30*time.Second, func() error {
		for _, n := range []string{ns, app1} {
			if _, err := apiserver.Client.CoreV1().ConfigMaps(n).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{}); err != nil {
				return err
			}
		}
		if _, err := apiserver.Client.CoreV1().Secrets(app1).Get(ctx, "istio.sleep", metav1.GetOptions{}); err != nil {
			return err
		}
		return nil
	})
	_, out := runCheck("--namespace", ns, "--sa-secrets")
	for _, want := range []string{"ok      ca istio-ca-secret", "chains to the trust bundle", "ok      bundle", "ok      sa-secrets"} {
		if !strings.Contains(out, want) {
			t.Fatalf("running install: no %q in\n%s\n%s", want, out, logs.String())
		}
	}
	if strings.Contains(out, "ERROR   bundle") || strings.Contains(out, "ERROR   sa-secrets") || strings.Contains(out, "ERROR   ca") {
		t.Fatalf("running install has errors:\n%s", out)
	}

	stop()
	orphan := apiserver.Namespace(t, "orphan")
	bad := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wildcard, namespace: ` + app1 + `}
spec:
  selector: {matchLabels: {app: "flask*"}}
`
	if out, err := apiserver.Kubectl(t, []byte(bad), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, nil, "delete", "authorizationpolicy", "wildcard", "-n", app1) })
	// An istio.<sa> Secret whose bundle lost the signing root.
	sec, err := apiserver.Client.CoreV1().Secrets(app1).Get(ctx, "istio.sleep", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data["root-cert.pem"] = []byte("not a bundle")
	if _, err := apiserver.Client.CoreV1().Secrets(app1).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out := runCheck("--namespace", ns, "--sa-secrets")
	for _, want := range []string{"invalid object left out: AuthorizationPolicy/" + app1 + "/wildcard", "wildcard not allowed",
		"ERROR   sa-secrets       expired, or not under the signing root: 1 Secret: " + app1 + "/istio.sleep"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("exit %d with errors, want 1", code)
	}
	// The namespaces without the bundle (other tests' too): counted, the
	// first ten named on the line, every one in -o json.
	r, ok := checkJSON(t, "--namespace", ns, "--sa-secrets").find("bundle", "error", rootcert.ConfigMap+" is missing in ")
	if !ok || !slices.Contains(r.Items, orphan) {
		t.Fatalf("no bundle error listing %s: %+v", orphan, r)
	}
	shown := r.Items[:min(len(r.Items), check.ListLimit)]
	if want := fmt.Sprintf("%s is missing in %d namespace", rootcert.ConfigMap, len(r.Items)); !strings.HasPrefix(r.Message, want) || !strings.Contains(r.Message, strings.Join(shown, ", ")) {
		t.Errorf("the message %q does not count %d namespaces and name %v", r.Message, len(r.Items), shown)
	}
	if line := lineMatching(out, regexp.QuoteMeta(checkLine("error", "bundle", r.Message))); line == "" {
		t.Errorf("no line %q in\n%s", r.Message, out)
	}
}

// TestCheckCacertsGone: an install signs with cacerts (istio-ca-secret
// left from before it was plugged in), and cacerts is deleted while the
// record stays. check says what serve says (restore cacerts, or delete
// the record) instead of an ok for istio-ca-secret, and checks the
// bundles against the root the replicas still sign under: none is
// reported stale.
func TestCheckCacertsGone(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	_, _, stop := startServeWith(t, ns, "replica-a") // istio-ca-secret, self-signed
	stop()
	root := catest.Root(t, ca.CAOptions{CommonName: "plugged root"})
	inter, _ := ca.NewIntermediate(root, ca.CAOptions{CommonName: "plugged intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, inter), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	startServeWith(t, ns, "replica-a")
	app1 := apiserver.Namespace(t, "app")
	kubetest.Eventually(t, 30*time.Second, func() error {
		if r := bundleRoots(t, app1); len(r) != 1 || !r[0].Equal(root.Cert) {
			return fmt.Errorf("the plugged-in root is not published to %s yet", app1)
		}
		return nil
	})
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, casecret.PluggedName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out := runCheck("--namespace", ns)
	want := checkLine("error", "ca", fmt.Sprintf("kube: secret %s/cacerts is gone, but this install signs with it (configmap %s/warden-ca-source, root sha256 %s), and the replicas running still do: "+
		"restore the secret; or, to switch every replica to the self-signed root in secret %s/istio-ca-secret (a new root: workloads must be given it), delete configmap %s/warden-ca-source",
		ns, ns, ca.Fingerprint(root.Cert), ns, ns))
	if code != 1 || !hasLine(out, want) {
		t.Fatalf("exit %d, want 1 and the line\n%s\nin\n%s", code, want, out)
	}
	for _, bad := range []string{"ok      ca istio-ca-secret", "lacks the signing root"} {
		if strings.Contains(out, bad) {
			t.Errorf("%q in\n%s", bad, out)
		}
	}
}

// applyDeployRBAC applies deploy/warden/rbac.yaml for an install in ns,
// its cluster-wide objects and service account named warden-<ns> so that
// tests do not share them, with edit applied to the YAML; it returns the
// service account's name.
func applyDeployRBAC(t *testing.T, ns string, edit func(string) string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kubetest.RepoRoot(), "deploy", "warden", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	name := "warden-" + ns
	y := strings.ReplaceAll(string(b), "namespace: warden-system", "namespace: "+ns)
	y = regexp.MustCompile(`(?m)name: warden$`).ReplaceAllString(y, "name: "+name)
	if out, err := apiserver.Kubectl(t, []byte(edit(y)), "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = apiserver.Kubectl(t, nil, "delete", "clusterrole,clusterrolebinding", name, "--ignore-not-found")
	})
	return name
}

// TestCheckRBACAndLeader: check asks the API server, as warden's service
// account, whether it may do what serve does: with deploy/'s RBAC, yes;
// with the tokenreviews rule removed (every workload would be refused),
// an error naming it. And it reads the leader's Lease: a running
// install's replica leads; once stopped, no replica does (an error).
func TestCheckRBACAndLeader(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	_, logs, stop := startServeWith(t, ns, "replica-a")
	waitBundle(t, ns)
	sa := applyDeployRBAC(t, ns, func(y string) string { return y })
	rbacOK := checkLine("ok", "rbac", "service account "+ns+"/"+sa+" may do the ")
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, out := runCheck("--namespace", ns, "--service-account", sa); !strings.Contains(out, rbacOK) || !strings.Contains(out, checkLine("ok", "leader", "replica replica-a leads (Lease "+ns+"/warden-leader renewed ")) {
			return fmt.Errorf("no ok for rbac and leader:\n%s\n%s", out, logs.String())
		}
		return nil
	})

	applyDeployRBAC(t, ns, func(y string) string {
		return strings.Replace(y, `  - apiGroups: ["authentication.k8s.io"]
    resources: ["tokenreviews"]
    verbs: ["create"]
`, "", 1)
	})
	want := checkLine("error", "rbac", "service account "+ns+"/"+sa+" may not create tokenreviews.authentication.k8s.io: every workload's token goes unchecked: certificate requests, SDS and xDS streams are answered Unavailable (deploy/warden/rbac.yaml grants it)")
	kubetest.Eventually(t, 20*time.Second, func() error {
		if code, out := runCheck("--namespace", ns, "--service-account", sa); code != 1 || !hasLine(out, want) || strings.Contains(out, rbacOK) {
			return fmt.Errorf("exit %d, want 1 and the line\n%s\nin\n%s", code, want, out)
		}
		return nil
	})

	stop()
	code, out := runCheck("--namespace", ns, "--service-account", sa)
	if l := lineMatching(out, regexp.QuoteMeta(checkLine("error", "leader", "no replica holds Lease "+ns+"/warden-leader (its last holder released it "))+`.*`); code != 1 || l == "" {
		t.Fatalf("stopped install: exit %d, want 1 and a leader error in\n%s", code, out)
	}
}
