package xds_test

import (
	"encoding/json"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// routeFields are the parts of a route a VirtualService rule (and a
// DestinationRule's consistent hash) sets, as JSON paths; Istio's
// metadata, decorator and explicit case sensitivity are its own.
var routeFields = []string{"match.path", "match.prefix", "match.safeRegex", "match.headers", "match.queryParameters", "statPrefix",
	"requestHeadersToAdd", "requestHeadersToRemove", "responseHeadersToAdd", "responseHeadersToRemove", "redirect", "directResponse",
	"typedPerFilterConfig", "route.cluster", "route.weightedClusters", "route.timeout", "route.retryPolicy", "route.hashPolicy",
	"route.prefixRewrite", "route.regexRewrite", "route.hostRewriteLiteral", "route.requestMirrorPolicies"}

// TestIstioVirtualServiceRoutes compares the sleep sidecar's routes for
// api (routingFieldsYAML: match names and stat prefixes, rule and
// destination headers, split destinations with their hash policies,
// retries, a redirect, a direct response, rewrites, a mirror, faults)
// with those Istio's own route translation builds (hack/istioauthz
// -listeners, the route configurations as protojson): every part in
// routeFields is the same. The rule with status 0 is left out: Istio
// refuses the whole VirtualService for it (warden skips the rule,
// reported; TestRouteRedirectAndDirectResponseAsIstio).
func TestIstioVirtualServiceRoutes(t *testing.T) {
	yaml := routingFieldsYAML[:strings.Index(routingFieldsYAML, "  - name: broken")]
	in := []oracleListenerCase{{ID: "routes", YAML: yaml,
		Proxy: oracleProxy{Type: "sidecar", Namespace: "default", Labels: map[string]string{"app": "sleep"}, IP: "10.0.0.4"}}}
	answers := testkit.AskIstio(t, []string{"-listeners"}, in)
	var res struct {
		Routes   []json.RawMessage `json:"routes"`
		Warnings []string          `json:"warnings"`
		Error    string            `json:"error"`
	}
	if err := json.Unmarshal(answers[0], &res); err != nil {
		t.Fatalf("oracle answer: %v", err)
	}
	if res.Error != "" || len(res.Warnings) > 0 {
		t.Fatalf("Istio: error %q, warnings %q", res.Error, res.Warnings)
	}
	const vhost = "api.default.svc.cluster.local:8080"
	istio := routesOf(t, res.Routes, vhost)
	cfg := proxyConfig(t, entryMesh(t, yaml, xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	var mine []json.RawMessage
	for _, r := range cfg.Routes {
		b, err := protojson.Marshal(r.(*routev3.RouteConfiguration))
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, b)
	}
	warden := routesOf(t, mine, vhost)
	if len(istio) != 5 {
		t.Fatalf("Istio built %d routes for %s, want 5", len(istio), vhost)
	}
	for name, ir := range istio {
		wr := warden[name]
		if wr == nil {
			t.Errorf("route %s: Istio has it, warden does not", name)
			continue
		}
		for _, f := range routeFields {
			if got, want := pathOf(wr, f), pathOf(ir, f); !jsonEqual(got, want) {
				t.Errorf("route %s: %s\nwarden %s\nIstio  %s", name, f, show(got), show(want))
			}
		}
	}
	if len(warden) != len(istio) {
		t.Errorf("warden has %d routes for %s, Istio %d", len(warden), vhost, len(istio))
	}
}

// routesOf are the routes, by name, of virtual host vh in route
// configurations rcs (protojson).
func routesOf(t *testing.T, rcs []json.RawMessage, vh string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, raw := range rcs {
		rc := jsonObject(t, raw)
		vhs, _ := rc["virtualHosts"].([]any)
		for _, v := range vhs {
			v := v.(map[string]any)
			if v["name"] != vh {
				continue
			}
			rs, _ := v["routes"].([]any)
			for _, r := range rs {
				r := r.(map[string]any)
				out[r["name"].(string)] = r
			}
		}
	}
	return out
}
