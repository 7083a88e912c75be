package xds_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/wardenmesh/warden/xds"
)

// The VirtualService and DestinationRule fields compiled after the field
// walk found them dropped, each as Istio's route translation
// (pilot/pkg/networking/core/route/route.go, retry/retry.go) builds it.
// TestIstioVirtualServiceRoutes compares routingFieldsYAML's routes with
// Istio's own; these name each behaviour, and cover what Istio refuses
// (a status 0) or what the oracle's pinned Istio predates (outlier error
// codes).

const routingFieldsYAML = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.4, labels: {app: sleep}, serviceAccount: sleep}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.2.1, labels: {version: v1}, serviceAccount: api}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.default.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [503, 504]}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpCookie: {name: session, ttl: 60s, path: /, attributes: [{name: SameSite, value: Strict}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  http:
  - name: one
    match: [{name: exact, uri: {exact: /one}, statPrefix: one-stats}]
    headers: {request: {set: {x-rule: "1"}}}
    route:
    - destination: {host: api.default.svc.cluster.local, subset: v1}
      headers: {request: {add: {x-dest: "1"}, remove: [x-drop]}, response: {set: {x-resp: "1"}}}
    retries: {attempts: 3, retryOn: "5xx,503,reset", backoff: 250ms, retryIgnorePreviousHosts: true}
  - name: split
    match: [{uri: {exact: /split}}]
    route:
    - destination: {host: api.default.svc.cluster.local}
      weight: 70
      headers: {request: {set: {x-canary: "no"}}}
    - destination: {host: api.default.svc.cluster.local, subset: v1}
      weight: 30
      headers: {request: {set: {x-canary: "yes"}}}
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {prefixRewrite: /new, derivePort: FROM_REQUEST_PORT, redirectCode: 302}
  - name: down
    match: [{uri: {prefix: /down}}]
    directResponse: {status: 503, body: {bytes: ZG93bg==}}
  - name: rewritten
    match: [{uri: {regex: "^/v1/.*"}, ignoreUriCase: true, queryParams: {debug: {exact: "1"}}}]
    rewrite: {uriRegexRewrite: {match: "^/v1/", rewrite: /v2/}, authority: api.internal}
    route: [{destination: {host: api.default.svc.cluster.local}}]
    mirror: {host: sleep.default.svc.cluster.local, port: {number: 80}}
    mirrorPercentage: {value: 12.5}
    timeout: 3s
    fault:
      delay: {fixedDelay: 1s, percentage: {value: 10}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example.com"}, {prefix: "https://dev."}, {regex: "https://.*[.]example[.]org"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-c, x-d]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
  - name: cors-legacy
    match: [{uri: {prefix: /legacy}}]
    route: [{destination: {host: api.default.svc.cluster.local}}]
    corsPolicy: {allowOrigin: ["https://b.example.com", "https://c.example.com"], allowCredentials: false, unmatchedPreflights: FORWARD}
  - name: cors-both
    match: [{uri: {prefix: /both}}]
    route: [{destination: {host: api.default.svc.cluster.local}}]
    corsPolicy: {allowOrigins: [{exact: "https://new.example.com"}], allowOrigin: ["https://old.example.com"], maxAge: 90s}
  - name: broken
    match: [{uri: {prefix: /broken}}]
    directResponse: {status: 0}
`

func routingFieldsRoutes(t *testing.T) (map[string]*routev3.Route, *xds.Config) {
	t.Helper()
	cfg := proxyConfig(t, entryMesh(t, routingFieldsYAML, xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	routes := map[string]*routev3.Route{}
	for _, r := range cfg.Routes {
		for _, vh := range r.(*routev3.RouteConfiguration).GetVirtualHosts() {
			if !strings.HasPrefix(vh.GetName(), "api.default.svc.cluster.local:") {
				continue
			}
			for _, rt := range vh.GetRoutes() {
				routes[rt.GetName()] = rt
			}
		}
	}
	return routes, cfg
}

// TestRouteMatchNameStatPrefixAndHeaders: a match's name joins the rule's
// (Istio's translateRoute), its statPrefix is the route's, and a lone
// destination's headers follow the rule's on the route; split
// destinations' headers go on their weighted clusters.
func TestRouteMatchNameStatPrefixAndHeaders(t *testing.T) {
	t.Parallel()
	routes, _ := routingFieldsRoutes(t)
	one := routes["one.exact"]
	if one == nil {
		t.Fatalf("no route one.exact: %v", slices.Sorted(maps.Keys(routes)))
	}
	if one.GetStatPrefix() != "one-stats" {
		t.Errorf("stat prefix %q, want one-stats", one.GetStatPrefix())
	}
	var req []string
	for _, h := range one.GetRequestHeadersToAdd() {
		req = append(req, h.GetHeader().GetKey()+"="+h.GetHeader().GetValue()+"/"+h.GetAppendAction().String())
	}
	want := []string{"x-rule=1/OVERWRITE_IF_EXISTS_OR_ADD", "x-dest=1/APPEND_IF_EXISTS_OR_ADD"}
	if !slices.Equal(req, want) {
		t.Errorf("request headers %q, want %q", req, want)
	}
	if got := one.GetRequestHeadersToRemove(); !slices.Equal(got, []string{"x-drop"}) {
		t.Errorf("request headers removed %q, want [x-drop]", got)
	}
	if got := one.GetResponseHeadersToAdd(); len(got) != 1 || got[0].GetHeader().GetKey() != "x-resp" {
		t.Errorf("response headers %v, want x-resp", got)
	}
	split := routes["split"]
	wc := split.GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 {
		t.Fatalf("split: %d weighted clusters, want 2", len(wc))
	}
	for i, want := range []string{"no", "yes"} {
		h := wc[i].GetRequestHeadersToAdd()
		if len(h) != 1 || h[0].GetHeader().GetKey() != "x-canary" || h[0].GetHeader().GetValue() != want {
			t.Errorf("split: cluster %s headers %v, want x-canary=%s", wc[i].GetName(), h, want)
		}
	}
	if len(split.GetRequestHeadersToAdd()) != 0 {
		t.Errorf("split: route headers %v, want none (they are per cluster)", split.GetRequestHeadersToAdd())
	}
	// Each destination's hash policy: subset v1's cookie, with its
	// attributes and ttl; the service's own has none.
	hp := split.GetRoute().GetHashPolicy()
	if len(hp) != 1 || hp[0].GetCookie().GetName() != "session" || hp[0].GetCookie().GetTtl().AsDuration().Seconds() != 60 ||
		len(hp[0].GetCookie().GetAttributes()) != 1 || hp[0].GetCookie().GetAttributes()[0].GetValue() != "Strict" {
		t.Errorf("split: hash policy %v, want subset v1's cookie session (ttl 60s, SameSite=Strict)", hp)
	}
}

// TestRouteRetriesAsIstio: status codes in retryOn become retriable
// status codes, and backoff and retryIgnorePreviousHosts are built, as
// Istio's retry.ConvertPolicy.
func TestRouteRetriesAsIstio(t *testing.T) {
	t.Parallel()
	routes, _ := routingFieldsRoutes(t)
	rp := routes["one.exact"].GetRoute().GetRetryPolicy()
	if rp.GetRetryOn() != "5xx,reset,retriable-status-codes" || !slices.Equal(rp.GetRetriableStatusCodes(), []uint32{503}) {
		t.Errorf("retryOn %q codes %v, want 5xx,reset,retriable-status-codes and [503]", rp.GetRetryOn(), rp.GetRetriableStatusCodes())
	}
	if rp.GetNumRetries().GetValue() != 3 || rp.GetRetryBackOff().GetBaseInterval().AsDuration().Milliseconds() != 250 {
		t.Errorf("retries %d backoff %v, want 3 and 250ms", rp.GetNumRetries().GetValue(), rp.GetRetryBackOff())
	}
	if p := rp.GetRetryHostPredicate(); len(p) != 1 || p[0].GetName() != "envoy.retry_host_predicates.previous_hosts" || rp.GetHostSelectionRetryMaxAttempts() != 5 {
		t.Errorf("host predicate %v (max attempts %d), want previous_hosts and 5", p, rp.GetHostSelectionRetryMaxAttempts())
	}
}

// TestRouteRedirectAndDirectResponseAsIstio: prefixRewrite and
// derivePort FROM_REQUEST_PORT (the listener's port), base64 bodies, and
// a direct response without a valid status reported and skipped (Envoy
// refuses status 0).
func TestRouteRedirectAndDirectResponseAsIstio(t *testing.T) {
	t.Parallel()
	routes, cfg := routingFieldsRoutes(t)
	rd := routes["moved"].GetRedirect()
	if rd.GetPrefixRewrite() != "/new" || rd.GetPortRedirect() != 8080 || rd.GetResponseCode() != routev3.RedirectAction_FOUND {
		t.Errorf("redirect %v, want prefix /new, port 8080, 302", rd)
	}
	if got := string(routes["down"].GetDirectResponse().GetBody().GetInlineBytes()); got != "down" {
		t.Errorf("direct response body %q, want down", got)
	}
	if routes["broken"] != nil {
		t.Errorf("route broken (status 0) built: Envoy refuses it")
	}
	if !slices.ContainsFunc(cfg.Reports, func(r string) bool {
		return strings.Contains(r, "http[7].directResponse.status 0 is not an HTTP status")
	}) {
		t.Errorf("no report for directResponse status 0: %q", cfg.Reports)
	}
}

// TestRouteCorsPolicyAsIstio: a rule's corsPolicy is the route's CORS
// filter configuration beside its fault (Istio's TranslateCORSPolicy:
// allowOrigins over the deprecated allowOrigin, lists joined, maxAge in
// seconds, unmatched preflights forwarded unless IGNORE); Envoy's
// outbound connection manager runs fault, CORS, router, as Istio's; a
// proxyless gRPC client has no CORS filter, and its corsPolicy is
// reported.
func TestRouteCorsPolicyAsIstio(t *testing.T) {
	t.Parallel()
	routes, cfg := routingFieldsRoutes(t)
	policy := func(name string) *corsv3.CorsPolicy {
		t.Helper()
		var p corsv3.CorsPolicy
		a := routes[name].GetTypedPerFilterConfig()[xds.CorsFilter]
		if a == nil {
			t.Fatalf("route %s: no CORS policy: %v", name, routes[name].GetTypedPerFilterConfig())
		}
		if err := a.UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		return &p
	}
	origins := func(p *corsv3.CorsPolicy) []string {
		var out []string
		for _, m := range p.GetAllowOriginStringMatch() {
			switch {
			case m.GetExact() != "":
				out = append(out, "exact "+m.GetExact())
			case m.GetPrefix() != "":
				out = append(out, "prefix "+m.GetPrefix())
			case m.GetSafeRegex() != nil:
				out = append(out, "regex "+m.GetSafeRegex().GetRegex())
			default:
				out = append(out, m.String())
			}
		}
		return out
	}
	full := policy("rewritten")
	if _, ok := routes["rewritten"].GetTypedPerFilterConfig()[xds.FaultFilter]; !ok {
		t.Errorf("rewritten: the fault is gone beside the CORS policy")
	}
	if got, want := origins(full), []string{"exact https://a.example.com", "prefix https://dev.", "regex https://.*[.]example[.]org"}; !slices.Equal(got, want) {
		t.Errorf("rewritten: origins %q, want %q", got, want)
	}
	if full.GetAllowMethods() != "GET,POST" || full.GetAllowHeaders() != "x-a,x-b" || full.GetExposeHeaders() != "x-c,x-d" ||
		full.GetMaxAge() != "86400" || !full.GetAllowCredentials().GetValue() || full.GetForwardNotMatchingPreflights().GetValue() ||
		full.GetFilterEnabled().GetDefaultValue().GetNumerator() != 100 {
		t.Errorf("rewritten: policy %v, want methods GET,POST, headers x-a,x-b, exposed x-c,x-d, max age 86400, credentials, IGNORE, enabled", full)
	}
	legacy := policy("cors-legacy")
	if got, want := origins(legacy), []string{"exact https://b.example.com", "exact https://c.example.com"}; !slices.Equal(got, want) {
		t.Errorf("cors-legacy: origins %q, want %q", got, want)
	}
	if legacy.GetAllowCredentials() == nil || legacy.GetAllowCredentials().GetValue() || !legacy.GetForwardNotMatchingPreflights().GetValue() || legacy.GetMaxAge() != "" {
		t.Errorf("cors-legacy: policy %v, want credentials false (set), FORWARD, no max age", legacy)
	}
	both := policy("cors-both")
	if got := origins(both); !slices.Equal(got, []string{"exact https://new.example.com"}) || both.GetMaxAge() != "90" ||
		both.GetAllowCredentials() != nil || !both.GetForwardNotMatchingPreflights().GetValue() {
		t.Errorf("cors-both: origins %q, policy %v; want allowOrigins only, max age 90, credentials unset, forwarded", got, both)
	}
	if got := hcmFilters(t, cfg, "0.0.0.0_8080"); !slices.Equal(got, []string{xds.FaultFilter, xds.CorsFilter, xds.RouterFilter}) {
		t.Errorf("outbound 8080: HTTP filters %q, want fault, CORS, router", got)
	}

	grpc := proxyConfig(t, entryMesh(t, routingFieldsYAML, xds.Options{}), sleepNode, xds.GeneratorGRPC)
	const report = "VirtualService default/api: http[5].corsPolicy does not apply to proxyless gRPC clients (grpc-go has no CORS filter); ignored"
	if !slices.Contains(grpc.Reports, report) {
		t.Errorf("gRPC: no report %q in %q", report, grpc.Reports)
	}
	for _, r := range grpc.Routes {
		for _, vh := range r.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if _, ok := rt.GetTypedPerFilterConfig()[xds.CorsFilter]; ok {
					t.Errorf("gRPC route %s has a CORS policy", rt.GetName())
				}
			}
		}
	}
	n := 0
	for _, r := range grpc.Listeners {
		l := r.(*listenerv3.Listener)
		var h hcmv3.HttpConnectionManager
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(&h); err != nil {
			t.Fatalf("gRPC listener %s: %v", l.GetName(), err)
		}
		var names []string
		for _, f := range h.GetHttpFilters() {
			names = append(names, f.GetName())
		}
		if !slices.Equal(names, []string{xds.FaultFilter, xds.RouterFilter}) {
			t.Errorf("gRPC listener %s: HTTP filters %q, want fault, router", l.GetName(), names)
		}
		n++
	}
	if n == 0 {
		t.Errorf("gRPC: no listeners")
	}
}

// hcmFilters names the HTTP filters of listener name's connection
// manager.
func hcmFilters(t *testing.T, cfg *xds.Config, name string) []string {
	t.Helper()
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		if l.GetName() != name {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				var names []string
				for _, hf := range h.GetHttpFilters() {
					names = append(names, hf.GetName())
				}
				return names
			}
		}
	}
	t.Fatalf("no HTTP connection manager in listener %s", name)
	return nil
}

// TestDestinationRuleOutlierErrorCodes: outlierDetectionHttpErrorCodes
// become the HTTP protocol options' outlier error matcher (Istio's
// applyOutlierDetectionErrorCodes; the oracle's pinned Istio predates
// the field).
func TestDestinationRuleOutlierErrorCodes(t *testing.T) {
	t.Parallel()
	_, cfg := routingFieldsRoutes(t)
	c := findCluster(t, cfg, "outbound|8080||api.default.svc.cluster.local")
	var opts httpv3.HttpProtocolOptions
	if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
		t.Fatal(err)
	}
	var codes []string
	for _, r := range opts.GetOutlierDetection().GetErrorMatcher().GetOrMatch().GetRules() {
		for _, h := range r.GetHttpResponseHeadersMatch().GetHeaders() {
			codes = append(codes, h.GetName()+"="+h.GetStringMatch().GetExact())
		}
	}
	if !slices.Equal(codes, []string{":status=503", ":status=504"}) {
		t.Errorf("outlier error matcher %q, want :status 503 or 504", codes)
	}
	if opts.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
		t.Errorf("protocol %v, want HTTP/1.1 (a declared HTTP port)", opts.GetUpstreamProtocolOptions())
	}
}

// TestUnappliedRoutingReported: what warden does not build is reported by
// name, never dropped: a sidecar's tcp routes, a DestinationRule with a
// workloadSelector, a tls block without mode (Istio: plaintext), a
// client credentialName, a locality setting.
func TestUnappliedRoutingReported(t *testing.T) {
	t.Parallel()
	yaml := routingFieldsYAML + `
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep.default.svc.cluster.local]
  tcp: [{route: [{destination: {host: sleep.default.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sleep-selected, namespace: default}
spec:
  host: sleep.default.svc.cluster.local
  workloadSelector: {matchLabels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sleep, namespace: default}
spec:
  host: sleep.default.svc.cluster.local
  trafficPolicy:
    tls: {sni: sleep.example.com}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {localityLbSetting: {enabled: true}}
      tls: {mode: SIMPLE, credentialName: sleep-cert}
`
	cfg := proxyConfig(t, entryMesh(t, yaml, xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	for _, want := range []string{
		"VirtualService default/sleep: tcp and tls routes are not supported at a sidecar",
		"DestinationRule default/sleep-selected: workloadSelector is not supported; the rule applies to no proxy",
		"DestinationRule default/sleep: loadBalancer.localityLbSetting is not supported",
		"DestinationRule default/sleep: tls.credentialName is not supported for a client",
	} {
		if !slices.ContainsFunc(cfg.Reports, func(r string) bool { return strings.HasPrefix(r, want) }) {
			t.Errorf("no report %q in %q", want, cfg.Reports)
		}
	}
	// Port 80's tls replaces the rule's wholesale (Istio's
	// GetPortLevelTrafficPolicy): SIMPLE there, so the rule's mode-less
	// tls is not reported, having no port left to apply to.
	if slices.ContainsFunc(cfg.Reports, func(r string) bool { return strings.Contains(r, "tls has no mode") }) {
		t.Errorf("the top-level tls (no mode) is reported though port 80's replaces it: %q", cfg.Reports)
	}
}

// TestGatewayWeightedTCP: a weighted tcp route at a gateway splits the
// connections by weight (Istio's weighted tcp_proxy), where it used to
// send them all to the first destination.
func TestGatewayWeightedTCP(t *testing.T) {
	t.Parallel()
	yaml := routingFieldsYAML + `
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route:
    - {destination: {host: api.default.svc.cluster.local, port: {number: 8080}}, weight: 80}
    - {destination: {host: api.default.svc.cluster.local, subset: v1, port: {number: 8080}}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gw, namespace: istio-system}
spec:
  hosts: [gw.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.0.9.1, labels: {istio: ingressgateway}, serviceAccount: gw}]
`
	cfg := proxyConfig(t, entryMesh(t, yaml, xds.Options{}), "router~10.0.9.1~gw-1.istio-system~istio-system.svc.cluster.local", xds.GeneratorEnvoy)
	var tp *tcpv3.TcpProxy
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		if l.GetName() != "0.0.0.0_9000" {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() == "envoy.filters.network.tcp_proxy" {
					tp = &tcpv3.TcpProxy{}
					if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	if tp == nil {
		t.Fatalf("no tcp_proxy on 0.0.0.0_9000; reports %q", cfg.Reports)
	}
	var got []string
	for _, c := range tp.GetWeightedClusters().GetClusters() {
		got = append(got, fmt.Sprintf("%s=%d", c.GetName(), c.GetWeight()))
	}
	want := []string{"outbound|8080||api.default.svc.cluster.local=80", "outbound|8080|v1|api.default.svc.cluster.local=20"}
	if !slices.Equal(got, want) {
		t.Errorf("weighted clusters %q, want %q", got, want)
	}
}
