package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// metricValue reads one series' value from a /metrics page.
func metricValue(t *testing.T, url, series string) float64 {
	t.Helper()
	return testkit.MetricValue(t, testkit.Scrape(t, url), series)
}

// appliedRe matches serve's info line on applied configuration.
var appliedRe = regexp.MustCompile(`(?m)^time=\S+ level=INFO msg="mesh configuration applied" objects=(\d+) services=(\d+) rejected=(\d+)$`)

// lastApplied is the last "mesh configuration applied" line's counts.
func lastApplied(logs string) (objects, rejected int, ok bool) {
	all := appliedRe.FindAllStringSubmatch(logs, -1)
	if len(all) == 0 {
		return 0, 0, false
	}
	m := all[len(all)-1]
	objects, _ = strconv.Atoi(m[1])
	rejected, _ = strconv.Atoi(m[3])
	return objects, rejected, true
}

// TestServeKubernetesRootNamespaceAndConfigLog: serve --kubernetes
// --root-namespace makes that namespace the mesh root (its policy reaches
// a sidecar in another namespace; another namespace's does not). serve
// says at info level what configuration it applied, warns for each
// invalid object it leaves out, and counts it in
// warden_config_rejected_objects; proxy-config --kubernetes reports the
// same object.
func TestServeKubernetesRootNamespaceAndConfigLog(t *testing.T) {
	ctx := context.Background()
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	meshRoot := apiserver.Namespace(t, "meshroot")
	other := apiserver.Namespace(t, "notroot")
	apiserver.MeshApp(t, shop, map[string]string{"v1": "10.50.0.1", "v2": "10.50.0.2"})
	policies := fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-deny, namespace: %s}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-root]", values: [deny]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-deny, namespace: %s}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-other]", values: [deny]}]}]
`, meshRoot, other)
	if out, err := apiserver.Kubectl(t, []byte(policies), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, []byte(policies), "delete", "-f", "-") })
	httpAddr := testkit.FreeAddr(t)
	metricsURL := "http://" + httpAddr + "/metrics"
	addr, logs, _ := startServeWith(t, ns, "replica-a", "--root-namespace", meshRoot, "--http-listen", httpAddr)

	conn := dialServe(t, ns, addr, logs)
	tok := apiserver.Token(t, shop, "reviews", "istio-ca")
	node := fmt.Sprintf("sidecar~10.50.0.1~reviews-v1.%s~%s.svc.cluster.local", shop, shop)
	rootPolicy, otherPolicy := "ns["+meshRoot+"]-policy[root-deny]-rule[0]", "ns["+other+"]-policy[other-deny]-rule[0]"
	// The registry and the configuration list asynchronously.
	var listeners []byte
	kubetest.Eventually(t, 30*time.Second, func() error {
		lds, err := openADS(t, conn, tok).get(node, resource.ListenerType, nil, nil)
		if err != nil {
			return err
		}
		listeners = nil
		for _, r := range lds.Resources {
			listeners = append(listeners, r.Value...)
		}
		if !bytes.Contains(listeners, []byte(rootPolicy)) {
			return fmt.Errorf("reviews-v1's %d listeners lack %s", len(lds.Resources), rootPolicy)
		}
		return nil
	})
	if bytes.Contains(listeners, []byte(otherPolicy)) {
		t.Errorf("reviews-v1's listeners hold %s, a policy of a namespace that is not the root", otherPolicy)
	}

	// What serve applied, at info level.
	var objects, rejected int
	kubetest.Eventually(t, 30*time.Second, func() error {
		var ok bool
		if objects, rejected, ok = lastApplied(logs.String()); !ok {
			return fmt.Errorf("no \"mesh configuration applied\" line")
		}
		return nil
	})
	if got := metricValue(t, metricsURL, "warden_config_rejected_objects"); got != float64(rejected) {
		t.Errorf("warden_config_rejected_objects %v, the log says rejected=%d", got, rejected)
	}

	// An object warden's validation refuses: warned, counted, left out.
	bad := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wildcard, namespace: ` + shop + `}
spec:
  selector: {matchLabels: {app: "reviews*"}}
`
	if out, err := apiserver.Kubectl(t, []byte(bad), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_, _ = apiserver.Kubectl(t, nil, "delete", "authorizationpolicy", "wildcard", "-n", shop)
		}
	})
	refused := "AuthorizationPolicy/" + shop + "/wildcard: api: document 1 (AuthorizationPolicy " + shop + `/wildcard): spec.selector.matchLabels["app"]: wildcard not allowed in label value match`
	warn := regexp.MustCompile(`(?m)^time=\S+ level=WARN msg="mesh configuration: invalid object left out" object=` + regexp.QuoteMeta(strconv.Quote(refused)) + `$`)
	kubetest.Eventually(t, 30*time.Second, func() error {
		o, r, _ := lastApplied(logs.String())
		if o != objects || r != rejected+1 || !warn.MatchString(logs.String()) {
			return fmt.Errorf("last applied objects=%d rejected=%d (want %d, %d), warning logged %t (want a line matching %s)\n%s",
				o, r, objects, rejected+1, warn.MatchString(logs.String()), warn, configLines(logs.String()))
		}
		return nil
	})
	if got := metricValue(t, metricsURL, "warden_config_rejected_objects"); got != float64(rejected+1) {
		t.Errorf("warden_config_rejected_objects %v with the invalid object, want %d", got, rejected+1)
	}

	// proxy-config --kubernetes says the same.
	var out, errb bytes.Buffer
	if code := app.Run(ctx, []string{"proxy-config", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--node", node, "-o", "json", "all"}, &out, &errb); code != 0 {
		t.Fatalf("proxy-config exited %d: %s", code, errb.String())
	}
	var pc struct{ Warnings []string }
	if err := json.Unmarshal(out.Bytes(), &pc); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if want := "invalid object left out (warden serve leaves it out too): " + refused; !containsString(pc.Warnings, want) {
		t.Errorf("proxy-config warnings %q lack %q", pc.Warnings, want)
	}

	// Deleted: no longer counted, and the info line says so.
	if out, err := apiserver.Kubectl(t, nil, "delete", "authorizationpolicy", "wildcard", "-n", shop); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	deleted = true
	kubetest.Eventually(t, 30*time.Second, func() error {
		if o, r, _ := lastApplied(logs.String()); o != objects || r != rejected {
			return fmt.Errorf("last applied objects=%d rejected=%d, want %d, %d", o, r, objects, rejected)
		}
		if got := metricValue(t, metricsURL, "warden_config_rejected_objects"); got != float64(rejected) {
			return fmt.Errorf("warden_config_rejected_objects %v, want %d", got, rejected)
		}
		return nil
	})
}

// configLines are serve's log lines about the mesh configuration.
func configLines(logs string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "configuration") || strings.Contains(l, "config object") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
