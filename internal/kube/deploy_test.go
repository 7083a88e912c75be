package kube_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubectl runs the kubectl a user would run against the test API server.
func kubectl(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(assetsDir, "kubectl")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("kubectl"); err != nil {
			t.Fatal("kubectl is required (hack/kube-binaries.sh builds it when the machine has none)")
		}
	}
	cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDeployManifests renders deploy/ with kustomize and has the real API
// server validate every object (server-side dry run).
func TestDeployManifests(t *testing.T) {
	rendered, err := kubectl(t, nil, "kustomize", filepath.Join("..", "..", "deploy"))
	if err != nil {
		t.Fatalf("kubectl kustomize deploy: %v\n%s", err, rendered)
	}
	for _, want := range []string{"kind: Deployment", "replicas: 2", "kind: ClusterRole", "kind: Service", "port: 15012", "kind: Namespace", "name: warden-system"} {
		if !strings.Contains(rendered, want) {
			t.Errorf("rendered manifests lack %q", want)
		}
	}
	_, err = cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "warden-system"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	out, err := kubectl(t, []byte(rendered), "apply", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if !strings.Contains(out, "deployment.apps/warden created (server dry run)") && !strings.Contains(out, "deployment.apps/warden configured (server dry run)") {
		t.Fatalf("unexpected kubectl output:\n%s", out)
	}
}
