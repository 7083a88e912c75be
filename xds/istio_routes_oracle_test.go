package xds_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
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
// retries, a redirect, a direct response, rewrites, a mirror, faults,
// CORS policies: every field, the deprecated allowOrigin alone and
// beside allowOrigins)
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
	if len(istio) != 7 {
		t.Fatalf("Istio built %d routes for %s, want 7", len(istio), vhost)
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

// gatewayL4OracleYAML: an ingress gateway (registered by a ServiceEntry)
// with a TCP server and a TLS passthrough server, each routed by a
// VirtualService split 80/20 between api and its subset v1.
const gatewayL4OracleYAML = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gw, namespace: istio-system}
spec:
  hosts: [gw.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.0.9.1, labels: {istio: ingressgateway}, serviceAccount: gw}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: tcp, protocol: TCP}, {number: 8443, name: tls, protocol: TLS}]
  endpoints: [{address: 10.0.2.1, labels: {version: v1}, serviceAccount: api}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}
  - {port: {number: 443, name: tls, protocol: TLS}, hosts: [api.example.com], tls: {mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: l4, namespace: istio-system}
spec:
  hosts: [api.example.com]
  gateways: [gw]
  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: api.default.svc.cluster.local, port: {number: 8080}}, weight: 80}
    - {destination: {host: api.default.svc.cluster.local, subset: v1, port: {number: 8080}}, weight: 20}
  tls:
  - match: [{port: 443, sniHosts: [api.example.com]}]
    route:
    - {destination: {host: api.default.svc.cluster.local, port: {number: 8443}}, weight: 80}
    - {destination: {host: api.default.svc.cluster.local, subset: v1, port: {number: 8443}}, weight: 20}
`

// TestIstioGatewayWeightedL4Routes: a gateway's tcp and tls routes split
// over weighted destinations as Istio's gateway builds them (tcp_proxy
// weighted clusters, hack/istioauthz -listeners' tcpClusters).
func TestIstioGatewayWeightedL4Routes(t *testing.T) {
	in := []oracleListenerCase{{ID: "gateway-l4", YAML: gatewayL4OracleYAML, Proxy: gatewayProxy}}
	answers := testkit.AskIstio(t, []string{"-listeners"}, in)
	var res struct {
		Listeners []struct {
			Name   string `json:"name"`
			Chains []struct {
				Filters []struct {
					Name        string   `json:"name"`
					TCPClusters []string `json:"tcpClusters"`
				} `json:"filters"`
			} `json:"chains"`
		} `json:"listeners"`
		Warnings []string `json:"warnings"`
		Error    string   `json:"error"`
	}
	if err := json.Unmarshal(answers[0], &res); err != nil {
		t.Fatalf("oracle answer: %v", err)
	}
	if res.Error != "" || len(res.Warnings) > 0 {
		t.Fatalf("Istio: error %q, warnings %q", res.Error, res.Warnings)
	}
	istio := map[string][]string{}
	for _, l := range res.Listeners {
		for _, c := range l.Chains {
			for _, f := range c.Filters {
				if f.Name == "envoy.filters.network.tcp_proxy" {
					istio[l.Name] = f.TCPClusters
				}
			}
		}
	}
	cfg := proxyConfig(t, entryMesh(t, gatewayL4OracleYAML, xds.Options{}), gatewayProxy.node, xds.GeneratorEnvoy)
	warden := map[string][]string{}
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() != "envoy.filters.network.tcp_proxy" {
					continue
				}
				var tp tcpv3.TcpProxy
				if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
					t.Fatal(err)
				}
				var cs []string
				if c := tp.GetCluster(); c != "" {
					cs = []string{c}
				}
				for _, wc := range tp.GetWeightedClusters().GetClusters() {
					cs = append(cs, fmt.Sprintf("%s=%d", wc.GetName(), wc.GetWeight()))
				}
				warden[l.GetName()] = cs
			}
		}
	}
	for _, name := range []string{"0.0.0.0_9000", "0.0.0.0_443"} {
		if len(istio[name]) != 2 {
			t.Fatalf("%s: Istio's tcp_proxy clusters %q, want a split over 2", name, istio[name])
		}
		if !slices.Equal(warden[name], istio[name]) {
			t.Errorf("%s: tcp_proxy clusters %q, Istio %q (reports %q)", name, warden[name], istio[name], cfg.Reports)
		}
	}
}
