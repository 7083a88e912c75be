package e2e

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/app"
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
	for _, want := range []string{"is missing in " + orphan, "invalid object left out: AuthorizationPolicy/" + app1 + "/wildcard", "wildcard not allowed",
		"ERROR   sa-secrets       expired, or not under the signing root: " + app1 + "/istio.sleep"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("exit %d with errors, want 1", code)
	}
}
