package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

// scrape reads a /metrics page: each series (name and labels, as
// printed) and its value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// TestServeKubernetesMetrics: Kubernetes mode's metrics on a real API
// server, each moved by the event it counts: leadership; the API
// requests by verb, resource and code; the work queue of the bundle
// ConfigMaps (client-go's metrics); a backoff from a ConfigMap another
// install owns; the publish lag of a new bundle (cacerts replaced); an
// invalid cacerts update ignored. No Vault series outside Vault mode.
func TestServeKubernetesMetrics(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	other := apiserver.Namespace(t, "other")
	if _, err := apiserver.Client.CoreV1().ConfigMaps(other).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: rootcert.ConfigMap, Annotations: map[string]string{kube.OwnerAnnotation: "another-install"}},
		Data:       map[string]string{rootcert.Key: "another install's roots"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root := catest.Root(t, ca.CAOptions{CommonName: "plugged root"})
	inter, _ := ca.NewIntermediate(root, ca.CAOptions{CommonName: "plugged intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, inter), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	httpAddr := testkit.FreeAddr(t)
	_, logs, _ := startServeWith(t, ns, "replica-a", "--http-listen", httpAddr)
	app1 := apiserver.Namespace(t, "app")
	waitRoot := func(r *ca.Material) {
		t.Helper()
		kubetest.Eventually(t, 30*time.Second, func() error {
			if got := bundleRoots(t, app1); len(got) != 1 || !got[0].Equal(r.Cert) {
				return fmt.Errorf("%s's bundle is not %q yet", app1, r.Cert.Subject)
			}
			return nil
		})
	}
	waitRoot(root)

	m := scrape(t, httpAddr)
	for series, want := range map[string]func(float64) bool{
		`warden_kube_leader`: func(v float64) bool { return v == 1 },
		`warden_kube_requests_total{code="200",resource="leases",verb="update"}`:             func(v float64) bool { return v >= 1 },
		`warden_kube_requests_total{code="201",resource="configmaps",verb="create"}`:         func(v float64) bool { return v >= 1 },
		`warden_kube_requests_total{code="200",resource="namespaces",verb="watch"}`:          func(v float64) bool { return v >= 1 },
		`warden_kube_owner_conflict_backoffs_total{kind="ConfigMap",reason="other_install"}`: func(v float64) bool { return v >= 1 },
		`warden_kube_owner_conflict_backoffs_total{kind="Secret",reason="fight"}`:            func(v float64) bool { return v == 0 },
		`workqueue_adds_total{name="bundle"}`:                                                func(v float64) bool { return v >= 2 },
		`warden_ca_plugged_in_invalid_total`:                                                 func(v float64) bool { return v == 0 },
		`warden_bundle_publish_lag_seconds_count`:                                            func(v float64) bool { return v == 0 },
	} {
		if v, ok := m[series]; !ok || !want(v) {
			t.Errorf("%s = %v (present: %t)", series, v, ok)
		}
	}
	for s := range m {
		if strings.HasPrefix(s, "warden_vault_") {
			t.Errorf("%s outside Vault mode", s)
		}
	}

	// A new plugged-in root: published to every namespace, each write's
	// lag observed.
	root2 := catest.Root(t, ca.CAOptions{CommonName: "plugged root 2"})
	inter2, _ := ca.NewIntermediate(root2, ca.CAOptions{CommonName: "plugged intermediate 2", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(ctx, kubetest.CacertsSecret(ns, inter2), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRoot(root2)
	kubetest.Eventually(t, 10*time.Second, func() error {
		if n := scrape(t, httpAddr)["warden_bundle_publish_lag_seconds_count"]; n < 2 {
			return fmt.Errorf("publish lag observed %v times", n)
		}
		return nil
	})

	// An invalid update: ignored, counted.
	bad := kubetest.CacertsSecret(ns, inter2)
	bad.Data["ca-key.pem"] = []byte("not a key")
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 10*time.Second, func() error {
		if n := scrape(t, httpAddr)["warden_ca_plugged_in_invalid_total"]; n != 1 {
			return fmt.Errorf("warden_ca_plugged_in_invalid_total %v\n%s", n, logs.String())
		}
		return nil
	})
}
