package meshconfig_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
)

// TestExamplesAppliedAndSeen: kubectl applies every example in
// docs/examples against the real API server (with warden's CRDs), and
// warden's informers decode each one.
func TestExamplesAppliedAndSeen(t *testing.T) {
	ctx := kubetest.Context(t)
	if _, err := apiserver.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	w := &meshconfig.Watcher{Client: dynamic.NewForConfigOrDie(apiserver.Config)}
	go func() { _ = w.Run(ctx) }()
	select {
	case <-w.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("informers did not sync")
	}
	out, err := apiserver.Kubectl(t, nil, "apply", "-f", filepath.Join(kubetest.RepoRoot(), "docs", "examples"))
	if err != nil {
		t.Fatalf("kubectl apply -f docs/examples: %v\n%s", err, out)
	}
	want := []string{
		"AuthorizationPolicy/default/flaskapp-viewers", "ClusterRbacConfig//default", "DestinationRule/default/flaskapp",
		"MeshPolicy//default", "PeerAuthentication/istio-system/default", "Policy/default/default",
		"ServiceEntry/default/flaskapp", "ServiceRole/default/flaskapp-viewer", "ServiceRoleBinding/default/sleep-views-flaskapp", "VirtualService/default/flaskapp",
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		var got []string
		for _, o := range w.List() {
			got = append(got, o.Type().Kind+"/"+o.Meta().Namespace+"/"+o.Meta().Name)
		}
		sort.Strings(got)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			return fmt.Errorf("informers see %v", got)
		}
		return nil
	})

	// The generated schema lets the API server refuse what warden would.
	bad := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: default}\nspec: {action: ALOW}\n"
	out, err = apiserver.Kubectl(t, []byte(bad), "apply", "-f", "-")
	if err == nil || !strings.Contains(out, `spec.action: Unsupported value: "ALOW"`) {
		t.Fatalf("a bad enum was accepted by the API server: %v\n%s", err, out)
	}
	// Deleting removes it from warden's view.
	if out, err := apiserver.Kubectl(t, nil, "delete", "virtualservice", "flaskapp", "-n", "default"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		for _, o := range w.List() {
			if o.Type().Kind == "VirtualService" {
				return fmt.Errorf("still sees the deleted VirtualService")
			}
		}
		return nil
	})
}
