package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/testkit"
)

var requestSeries = regexp.MustCompile(`^warden_kube_requests_total\{code="([^"]*)",resource="([^"]*)",verb="([^"]*)"\}$`)

// requests are a replica's API requests by "verb resource" between two
// scrapes.
func requests(before, after map[string]float64) map[string]int {
	out := map[string]int{}
	for s, v := range after {
		if m := requestSeries.FindStringSubmatch(s); m != nil {
			if n := int(v - before[s]); n > 0 {
				out[m[3]+" "+m[2]] += n
			}
		}
	}
	return out
}

func sorted(m map[string]int) string {
	var keys []string
	for k, n := range m {
		keys = append(keys, fmt.Sprintf("%s=%d", k, n))
	}
	slices.Sort(keys)
	return strings.Join(keys, " ")
}

// TestKubeSteadyStateIsQuiet: two replicas, no rotation. Once settled,
// neither writes a ConfigMap (no report outside a rotation) nor reads the
// rotation ConfigMap or any Secret (watched, not polled) for 15 s; what
// they do ask is the Lease, as leader election must. The figures are
// logged.
func TestKubeSteadyStateIsQuiet(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	flags := []string{"--rotation-grace", "0s", "--auto-rotate-root", "0"}
	httpA, httpB := testkit.FreeAddr(t), testkit.FreeAddr(t)
	_, logsA, _ := startServeWith(t, ns, "replica-a", append(flags, "--http-listen", httpA)...)
	waitBundle(t, shop)
	_, logsB, _ := startServeWith(t, ns, "replica-b", append(flags, "--http-listen", httpB)...)
	time.Sleep(3 * time.Second) // settled: informers synced, the leader's first pass done

	const window = 15 * time.Second
	a0, b0 := scrape(t, httpA), scrape(t, httpB)
	time.Sleep(window)
	a, b := requests(a0, scrape(t, httpA)), requests(b0, scrape(t, httpB))
	t.Logf("in %s without a rotation: leader %s; other replica %s", window, sorted(a), sorted(b))
	for who, reqs := range map[string]map[string]int{"leader": a, "other replica": b} {
		for k, n := range reqs {
			verb, resource, _ := strings.Cut(k, " ")
			if (resource == "configmaps" || resource == "secrets") && verb != "watch" {
				t.Errorf("%s: %d requests %s in %s without a rotation (reports written, state polled?)", who, n, k, window)
			}
		}
	}
	reports, err := apiserver.Client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: "warden.io/rotation-report"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range reports.Items {
		t.Errorf("report %s exists without a rotation", cm.Name)
	}
	if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rotationstore.ConfigMap, metav1.GetOptions{}); err != nil {
		t.Logf("%s: %v", rotationstore.ConfigMap, err)
	}
	if t.Failed() {
		t.Logf("replica a:\n%s\nreplica b:\n%s", logsA.String(), logsB.String())
	}
}

// TestKubeStaleReportsCollected: outside a rotation, the leader removes
// the report a replica left when it died (kill -9; a Deployment's
// replacement has another name) once its pod is gone, and keeps that of a
// replica whose pod still runs.
func TestKubeStaleReportsCollected(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	store := &rotationstore.Store{Client: apiserver.Client, Namespace: ns}
	old := time.Now().Add(-time.Hour)
	runningPod(t, ns, "warden-alive", nil)
	for _, r := range []string{"warden-killed", "warden-alive"} {
		if err := store.WriteReport(ctx, rotationstore.ReplicaReport{Replica: r, At: old}); err != nil {
			t.Fatal(err)
		}
	}
	_, logs, _ := startServeWith(t, ns, "replica-a")
	kubetest.Eventually(t, 40*time.Second, func() error {
		if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rotationstore.ConfigMap+"-warden-killed", metav1.GetOptions{}); err == nil {
			return fmt.Errorf("the report of warden-killed, whose pod is gone, is still there")
		}
		return nil
	})
	testkit.WaitLog(t, logs, `msg="root rotation: removed the report of a replica whose pod is gone" replica=warden-killed`, 5*time.Second)
	if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rotationstore.ConfigMap+"-warden-alive", metav1.GetOptions{}); err != nil {
		t.Errorf("the report of warden-alive, whose pod runs: %v", err)
	}
}

// TestKubeLogsSummarize: an install starting over 40 namespaces (and
// their service accounts) logs its writes as one INFO line each for the
// bundle ConfigMaps and the istio.<sa> Secrets, with their counts, not a
// line per object; and every URL it logs answers (no JWKS in Kubernetes
// mode, where it mints no tokens).
func TestKubeLogsSummarize(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	var apps []string
	for range 40 {
		a := apiserver.Namespace(t, "many")
		apiserver.ServiceAccount(t, a, "sleep")
		apps = append(apps, a)
	}
	httpAddr := testkit.FreeAddr(t)
	_, logs, _ := startServeWith(t, ns, "replica-a", "--sa-secrets", "--http-listen", httpAddr)
	kubetest.Eventually(t, 60*time.Second, func() error {
		for _, a := range apps {
			if _, err := apiserver.Client.CoreV1().Secrets(a).Get(kubetest.Context(t), "istio.sleep", metav1.GetOptions{}); err != nil {
				return err
			}
			if len(bundleRoots(t, a)) != 1 {
				return fmt.Errorf("no bundle in %s yet", a)
			}
		}
		return nil
	})
	time.Sleep(time.Second) // the queues have run empty: the summaries are out
	out := logs.String()
	for _, perObject := range []string{`level=INFO msg="published trust bundle"`, `level=INFO msg="created service account secret"`} {
		if n := strings.Count(out, perObject); n > 0 {
			t.Errorf("%d lines %s", n, perObject)
		}
	}
	total := func(msg, key string) int {
		n := 0
		re := regexp.MustCompile(regexp.QuoteMeta(`level=INFO msg="`+msg+`"`) + `.* ` + key + `=(\d+)`)
		for _, m := range re.FindAllStringSubmatch(out, -1) {
			var k int
			fmt.Sscan(m[1], &k)
			n += k
		}
		return n
	}
	if n := total("trust bundle ConfigMaps written (each at DEBUG)", "published"); n < len(apps) {
		t.Errorf("the summaries count %d bundle ConfigMaps published, want at least %d", n, len(apps))
	}
	if n := total("istio.<sa> Secrets written (each at DEBUG)", "created"); n < len(apps) {
		t.Errorf("the summaries count %d istio.<sa> Secrets created, want at least %d", n, len(apps))
	}
	t.Logf("%d INFO lines for the start of an install with %d namespaces", strings.Count(out, "level=INFO"), len(apps))
	if n := strings.Count(out, "level=INFO"); n > 30 {
		t.Errorf("%d INFO lines for an install's start:\n%s", n, out)
	}
	for _, m := range regexp.MustCompile(`(?:url|health)=(http://\S+)`).FindAllStringSubmatch(out, -1) {
		resp, err := http.Get(m[1])
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("serve logs %s, which answers %s", m[1], resp.Status)
		}
	}
}
