package xds_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// TestIstioListenerPolicyOrder compares the listeners warden builds with
// those Istio's own config generator builds (hack/istioauthz -listeners:
// pilot/pkg/networking/core at the pinned istio.io/istio, the code istiod
// runs) for the same objects and proxy: the sidecar's virtualInbound
// (each port's filter chains) and the ingress gateway's listeners (an HTTP,
// an HTTPS, a TCP, a TLS-terminated and a PASSTHROUGH server). On every
// filter chain the policy filters — CUSTOM (shadow RBAC + ext_authz),
// jwt_authn, RBAC AUDIT, DENY, ALLOW — must come in Istio's order relative
// to each other and to the router or tcp_proxy, with the same RBAC actions;
// on the gateway's chains, whose routes come from VirtualServices, the
// filters those routes configure (fault, then CORS: routeFilters) must sit
// where Istio puts them, after the policy filters and before the router;
// and every HTTP connection manager must take the client's address as
// Istio's does (use_remote_address, xff_num_trusted_hops from meshConfig
// defaultConfig.gatewayTopology.numTrustedProxies ↔
// xds.Options.GatewayTrustedProxies, forward_client_cert_details).
//
// Filters that are not policy are dropped from the comparison only if
// notPolicy lists them; any other name, on either side, fails the test.
func TestIstioListenerPolicyOrder(t *testing.T) {
	base, err := os.ReadFile("testdata/istio-listeners/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cases := listenerOracleCases(string(base))
	var in []oracleListenerCase
	for _, c := range cases {
		in = append(in, c.istio(gatewayProxy), c.istio(sidecarProxy))
	}
	answers := testkit.AskIstio(t, []string{"-listeners"}, in)

	compared := map[string]int{}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs, err := api.Decode([]byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			services, err := xds.ServicesFromEntries(objs, "")
			if err != nil {
				t.Fatal(err)
			}
			mesh, err := xds.NewMesh(objs, services, xds.Options{GatewayTrustedProxies: c.trustedProxies})
			if err != nil {
				t.Fatal(err)
			}
			for k, p := range []oracleProxy{gatewayProxy, sidecarProxy} {
				var res oracleListenerResult
				if err := json.Unmarshal(answers[2*i+k], &res); err != nil {
					t.Fatalf("oracle answer: %v", err)
				}
				if res.Error != "" || len(res.Warnings) > 0 {
					t.Fatalf("%s: Istio: error %q, warnings %q", p.Type, res.Error, res.Warnings)
				}
				istio := map[string]oracleListener{}
				for _, l := range res.Listeners {
					istio[l.Name] = l
				}
				warden := wardenListeners(t, mesh, p)
				var n int
				if p.Type == "router" {
					n = compareGateway(t, warden, istio)
					for _, ch := range istio["0.0.0.0_80"].Chains {
						appliesAll(t, "gateway 0.0.0.0_80", ch, c.kinds)
					}
				} else {
					n = compareInbound(t, warden[xds.InboundListener], istio["virtualInbound"], p.ports)
					for _, ch := range istio["virtualInbound"].Chains {
						if ch.Match != nil && ch.Match.DestinationPort == 9080 {
							appliesAll(t, "sidecar inbound 9080", ch, c.kinds)
						}
					}
				}
				compared[p.Type] += n
			}
		})
	}
	t.Logf("%d cases; filter chains compared: %d gateway, %d sidecar inbound", len(cases), compared["router"], compared["sidecar"])
}

// oracleProxy is a proxy of the test mesh, as the oracle and warden name it.
type oracleProxy struct {
	Type      string            `json:"type"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
	IP        string            `json:"ip"`
	node      string
	ports     []uint32 // a sidecar's inbound ports
}

var (
	gatewayProxy = oracleProxy{Type: "router", Namespace: "istio-system", Labels: map[string]string{"istio": "ingressgateway"}, IP: "10.0.9.1",
		node: "router~10.0.9.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"}
	sidecarProxy = oracleProxy{Type: "sidecar", Namespace: "default", Labels: map[string]string{"app": "app"}, IP: "10.0.0.2",
		node: "sidecar~10.0.0.2~app-1.default~default.svc.cluster.local", ports: []uint32{9000, 9080}}
)

// The oracle's -listeners protocol (hack/istioauthz/listeners.go).
type oracleListenerCase struct {
	ID         string      `json:"id"`
	YAML       string      `json:"yaml"`
	MeshConfig string      `json:"meshConfig"`
	Proxy      oracleProxy `json:"proxy"`
}

type oracleListenerResult struct {
	ID        string           `json:"id"`
	Listeners []oracleListener `json:"listeners"`
	Warnings  []string         `json:"warnings"`
	Error     string           `json:"error"`
}

type oracleListener struct {
	Name   string        `json:"name"`
	Chains []oracleChain `json:"chains"`
}

type oracleChain struct {
	Name    string         `json:"name"`
	Default bool           `json:"default"`
	Match   *oracleMatch   `json:"match"`
	Filters []oracleFilter `json:"filters"`
}

type oracleMatch struct {
	DestinationPort   uint32   `json:"destinationPort"`
	ServerNames       []string `json:"serverNames"`
	TransportProtocol string   `json:"transportProtocol"`
}

type oracleFilter struct {
	Name         string     `json:"name"`
	Action       string     `json:"action"`
	Shadow       string     `json:"shadow"`
	ShadowPrefix string     `json:"shadowPrefix"`
	HCM          *oracleHCM `json:"hcm"`
}

type oracleHCM struct {
	HTTPFilters              []oracleFilter `json:"httpFilters"`
	UseRemoteAddress         bool           `json:"useRemoteAddress"`
	XffNumTrustedHops        uint32         `json:"xffNumTrustedHops"`
	ForwardClientCertDetails string         `json:"forwardClientCertDetails"`
}

// listenerOracleCase is the test mesh with one set of policies.
type listenerOracleCase struct {
	name           string
	yaml           string
	trustedProxies uint32
	kinds          []string // the policy kinds that apply to both proxies
}

// policyMark is what each kind of policy puts in an HTTP chain's policy
// sequence (chainPolicy).
var policyMark = map[string]string{"ALLOW": "rules=ALLOW", "DENY": "rules=DENY", "AUDIT": "rules=LOG",
	"CUSTOM": "envoy.filters.http.ext_authz", "JWT": "envoy.filters.http.jwt_authn"}

// appliesAll checks that an HTTP chain of Istio's runs a filter for each
// of the case's policy kinds and no other, so that a corpus whose policies
// applied to nothing (on both sides alike) cannot pass unnoticed.
func appliesAll(t *testing.T, what string, c oracleChain, kinds []string) {
	t.Helper()
	seq, _, err := chainPolicy(c, false)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	all := strings.Join(seq, "\n")
	for kind, mark := range policyMark {
		if got, want := strings.Contains(all, mark), slices.Contains(kinds, kind); got != want {
			t.Errorf("%s: Istio's chain has %s's filter: %v, want %v; the corpus does not test what it says\n%s", what, kind, got, want, all)
		}
	}
}

func (c listenerOracleCase) istio(p oracleProxy) oracleListenerCase {
	return oracleListenerCase{ID: c.name + "/" + p.Type, YAML: c.yaml, Proxy: p, MeshConfig: fmt.Sprintf(`
extensionProviders:
- name: ext-authz
  envoyExtAuthzGrpc: {service: ext-authz.istio-system.svc.cluster.local, port: 9000}
defaultConfig: {gatewayTopology: {numTrustedProxies: %d}}
`, c.trustedProxies)}
}

// oraclePolicies are the policies of each kind a case may hold, by
// namespace and selector (%s: metadata, then the selector line).
var oraclePolicies = map[string]string{
	"ALLOW": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]`,
	"DENY": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}, {from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]`,
	"AUDIT": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: AUDIT
  rules: [{from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]`,
	"CUSTOM": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]`,
	"JWT": `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: %s
spec:
  %s
  jwtRules: [{issuer: "https://issuer.example.com", jwks: "{\"keys\":[]}"}]`,
	// Dry-run policies: shadow rules only.
	"DRY-DENY": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["198.51.100.0/24"]}}]}]`,
	"DRY-ALLOW": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: %s
spec:
  %s
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: ["198.51.100.0/24"]}}]}]`,
}

const strictPeerAuthentication = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}`

// listenerOracleCases: every policy kind alone, all five together (with
// and without dry-run policies, with STRICT mTLS), none; each set mesh-wide
// (root namespace, no selector) and by selector (the gateway's policies in
// istio-system selecting istio=ingressgateway, the sidecar's in default
// selecting app=app). numTrustedProxies varies from case to case.
func listenerOracleCases(base string) []listenerOracleCase {
	all := []string{"ALLOW", "DENY", "AUDIT", "CUSTOM", "JWT"}
	sets := []struct {
		name   string
		kinds  []string
		strict bool
	}{
		{"none", nil, false},
		{"ALLOW", []string{"ALLOW"}, false},
		{"DENY", []string{"DENY"}, false},
		{"AUDIT", []string{"AUDIT"}, false},
		{"CUSTOM", []string{"CUSTOM"}, false},
		{"JWT", []string{"JWT"}, false},
		{"all", all, false},
		{"all+dry-run", append(slices.Clone(all), "DRY-DENY", "DRY-ALLOW"), false},
		{"all+STRICT", all, true},
	}
	type target struct{ ns, selector string }
	placements := []struct {
		name    string
		targets []target
	}{
		{"mesh-wide", []target{{"istio-system", ""}}},
		{"selected", []target{{"istio-system", "selector: {matchLabels: {istio: ingressgateway}}"}, {"default", "selector: {matchLabels: {app: app}}"}}},
	}
	var out []listenerOracleCase
	for _, pl := range placements {
		for _, set := range sets {
			docs := []string{base}
			for _, tg := range pl.targets {
				for _, kind := range set.kinds {
					name := strings.ToLower(kind) + "-" + tg.ns
					meta := fmt.Sprintf("{name: %s, namespace: %s}", name, tg.ns)
					if strings.HasPrefix(kind, "DRY-") {
						meta = fmt.Sprintf(`{name: %s, namespace: %s, annotations: {istio.io/dry-run: "true"}}`, name, tg.ns)
					}
					sel := tg.selector
					if sel == "" {
						sel = "# no selector"
					}
					docs = append(docs, fmt.Sprintf(oraclePolicies[kind], meta, sel))
				}
			}
			if set.strict {
				docs = append(docs, strictPeerAuthentication)
			}
			out = append(out, listenerOracleCase{name: pl.name + "/" + set.name, yaml: strings.Join(docs, "\n---\n"),
				trustedProxies: []uint32{0, 2, 5}[len(out)%3], kinds: set.kinds})
		}
	}
	return out
}

// wardenListeners are the listeners warden builds for p's own traffic
// (a sidecar's inbound, a gateway's servers), by name.
func wardenListeners(t *testing.T, mesh *xds.Mesh, p oracleProxy) map[string]oracleListener {
	t.Helper()
	proxy, err := xds.ParseNodeID(p.node)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := mesh.InboundFor(proxy, mesh.Workload(proxy), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]oracleListener{}
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		s, err := summariseListener(l)
		if err != nil {
			t.Fatalf("warden listener %s: %v", l.Name, err)
		}
		out[l.Name] = s
	}
	return out
}

// summariseListener reads warden's listener as the oracle summarises
// Istio's.
func summariseListener(l *listenerv3.Listener) (oracleListener, error) {
	s := oracleListener{Name: l.Name}
	chains := l.FilterChains
	if l.DefaultFilterChain != nil {
		chains = append(slices.Clone(chains), l.DefaultFilterChain)
	}
	for i, fc := range chains {
		c := oracleChain{Name: fc.Name, Default: i == len(l.FilterChains)}
		if m := fc.FilterChainMatch; m != nil {
			c.Match = &oracleMatch{m.GetDestinationPort().GetValue(), m.ServerNames, m.TransportProtocol}
		}
		for _, f := range fc.Filters {
			fs, err := summariseFilter(f.Name, f.GetTypedConfig())
			if err != nil {
				return s, err
			}
			c.Filters = append(c.Filters, fs)
		}
		s.Chains = append(s.Chains, c)
	}
	return s, nil
}

func summariseFilter(name string, tc *anypb.Any) (oracleFilter, error) {
	fs := oracleFilter{Name: name}
	if tc == nil {
		return fs, nil
	}
	action := func(r *rbacv3.RBAC) string {
		if r == nil {
			return ""
		}
		return r.Action.String()
	}
	m, err := tc.UnmarshalNew()
	if err != nil {
		return fs, fmt.Errorf("filter %s: %w", name, err)
	}
	switch c := m.(type) {
	case *rbachttp.RBAC:
		fs.Action, fs.Shadow, fs.ShadowPrefix = action(c.Rules), action(c.ShadowRules), c.ShadowRulesStatPrefix
	case *rbacnet.RBAC:
		fs.Action, fs.Shadow, fs.ShadowPrefix = action(c.Rules), action(c.ShadowRules), c.ShadowRulesStatPrefix
	case *hcmv3.HttpConnectionManager:
		h := &oracleHCM{UseRemoteAddress: c.GetUseRemoteAddress().GetValue(), XffNumTrustedHops: c.XffNumTrustedHops,
			ForwardClientCertDetails: c.ForwardClientCertDetails.String()}
		for _, hf := range c.HttpFilters {
			s, err := summariseFilter(hf.Name, hf.GetTypedConfig())
			if err != nil {
				return fs, err
			}
			h.HTTPFilters = append(h.HTTPFilters, s)
		}
		fs.HCM = h
	}
	return fs, nil
}

// notPolicy are the filters Istio puts on these chains that are not
// policy, which warden deliberately does not emit: they are left out of
// the comparison. Any other filter, on either side, must be a policy
// filter or a terminal one (policyFilter), or the test fails: a new
// filter in Istio's chains (or warden's) has to be looked at, not
// skipped.
var notPolicy = map[string]string{
	// Istio's peer metadata exchange (telemetry; network filter on
	// sidecar inbound chains, HTTP filter in every connection manager).
	"istio.metadata_exchange": "telemetry peer metadata",
	// Prometheus stats (only with telemetry configured).
	"istio.stats": "telemetry",
	// Gateways: ALPN override for upstream istio-* protocols.
	"istio.alpn": "upstream ALPN for mTLS to sidecars",
	// gRPC stats: warden emits none.
	"envoy.filters.http.grpc_stats": "stats",
}

// routeFilters are the HTTP filters a VirtualService's routes configure
// (typed_per_filter_config). Where the routes come from VirtualServices
// (a gateway's servers) they are compared by position like policy
// filters; on the sidecar's inbound they are left out: its one route
// carries no VirtualService's policy, so Istio's connection manager has
// both filters there inert, and warden's has neither.
var routeFilters = map[string]string{
	"envoy.filters.http.fault": "fault injection",
	"envoy.filters.http.cors":  "CORS",
}

// policyFilter names a filter's place in the comparison: RBAC with its
// actions (rules, shadow rules and, with shadow rules, their stat
// prefix: istio_ext_authz_ ties a CUSTOM shadow to its ext_authz), the
// external authorizer, jwt_authn, the terminal filters and, on routed
// chains, routeFilters; "" for notPolicy (and routeFilters elsewhere); an
// error for anything else.
func policyFilter(f oracleFilter, routed bool) (string, error) {
	switch f.Name {
	case "envoy.filters.http.rbac", "envoy.filters.network.rbac":
		s := f.Name + " rules=" + f.Action
		if f.Shadow != "" {
			s += " shadow=" + f.Shadow + " " + f.ShadowPrefix
		}
		return s, nil
	case "envoy.filters.http.ext_authz", "envoy.filters.network.ext_authz", "envoy.filters.http.jwt_authn",
		"envoy.filters.http.router", "envoy.filters.network.tcp_proxy", "envoy.filters.network.http_connection_manager":
		return f.Name, nil
	}
	if _, ok := routeFilters[f.Name]; ok {
		if routed {
			return f.Name, nil
		}
		return "", nil
	}
	if _, ok := notPolicy[f.Name]; ok {
		return "", nil
	}
	return "", fmt.Errorf("filter %s is neither policy nor listed in notPolicy: decide where it belongs", f.Name)
}

// chainPolicy is a filter chain's policy filters in order (those of its
// connection manager after it; with routed, its routeFilters too), and
// its connection manager's settings.
func chainPolicy(c oracleChain, routed bool) (seq []string, hcm string, err error) {
	for _, f := range c.Filters {
		p, err := policyFilter(f, routed)
		if err != nil {
			return nil, "", err
		}
		if p != "" {
			seq = append(seq, p)
		}
		if f.HCM == nil {
			continue
		}
		hcm = fmt.Sprintf("use_remote_address=%v xff_num_trusted_hops=%d forward_client_cert_details=%s",
			f.HCM.UseRemoteAddress, f.HCM.XffNumTrustedHops, f.HCM.ForwardClientCertDetails)
		for _, hf := range f.HCM.HTTPFilters {
			p, err := policyFilter(hf, routed)
			if err != nil {
				return nil, "", err
			}
			if p != "" {
				seq = append(seq, "  "+p)
			}
		}
	}
	return seq, hcm, nil
}

// compareChains requires two filter chains to run the same policy
// filters (with routed, and routeFilters) in the same order, with the
// same connection manager settings.
func compareChains(t *testing.T, what string, warden, istio oracleChain, routed bool) {
	t.Helper()
	ws, wh, err := chainPolicy(warden, routed)
	if err != nil {
		t.Errorf("%s: warden's chain %q: %v", what, warden.Name, err)
		return
	}
	is, ih, err := chainPolicy(istio, routed)
	if err != nil {
		t.Errorf("%s: Istio's chain %q: %v", what, istio.Name, err)
		return
	}
	if !slices.Equal(ws, is) {
		t.Errorf("%s: policy filters differ from Istio's\n--- warden (%s):\n%s\n--- Istio (%s):\n%s", what, warden.Name,
			strings.Join(ws, "\n"), istio.Name, strings.Join(is, "\n"))
	}
	if wh != ih {
		t.Errorf("%s: connection manager: warden %s; Istio %s", what, wh, ih)
	}
}

// gatewayServers are the listeners and SNI matches of the test Gateway's
// servers, which both sides must have: the comparison is not vacuous.
var gatewayServers = []string{"0.0.0.0_80 []", "0.0.0.0_443 [web.example.com]", "0.0.0.0_31400 []",
	"0.0.0.0_9444 [db.example.com]", "0.0.0.0_8443 [pass.example.com]"}

// compareGateway pairs the gateway's filter chains by listener and SNI.
func compareGateway(t *testing.T, warden, istio map[string]oracleListener) int {
	t.Helper()
	byKey := func(side string, ls map[string]oracleListener) map[string]oracleChain {
		out := map[string]oracleChain{}
		for _, l := range ls {
			for _, c := range l.Chains {
				var names []string
				if c.Match != nil {
					names = slices.Sorted(slices.Values(c.Match.ServerNames))
				}
				k := fmt.Sprintf("%s %v", l.Name, names)
				if _, dup := out[k]; dup {
					t.Errorf("%s: two gateway chains %s", side, k)
				}
				out[k] = c
			}
		}
		return out
	}
	w, i := byKey("warden", warden), byKey("Istio", istio)
	for _, k := range gatewayServers {
		if _, ok := w[k]; !ok {
			t.Errorf("gateway: warden has no chain %s", k)
		}
		if _, ok := i[k]; !ok {
			t.Errorf("gateway: Istio has no chain %s", k)
		}
	}
	n := 0
	for _, k := range slices.Sorted(maps.Keys(i)) {
		wc, ok := w[k]
		if !ok {
			t.Errorf("gateway chain %s: Istio has it, warden not", k)
			continue
		}
		compareChains(t, "gateway chain "+k, wc, i[k], true)
		n++
	}
	for k := range w {
		if _, ok := i[k]; !ok {
			t.Errorf("gateway chain %s: warden has it, Istio not", k)
		}
	}
	return n
}

// compareInbound compares the sidecar's virtualInbound chains of the
// workload's ports, grouped by destination port and transport protocol
// (Istio has a chain per ALPN variant: every chain of a group must run
// what warden's chains of that group run). Istio's chains without a
// destination port (passthrough to ports no service declares, the
// 15006 blackhole) are not compared: warden serves no such chain.
func compareInbound(t *testing.T, warden, istio oracleListener, ports []uint32) int {
	t.Helper()
	group := func(side string, l oracleListener) map[string][]oracleChain {
		out := map[string][]oracleChain{}
		for _, c := range l.Chains {
			if c.Match == nil || !slices.Contains(ports, c.Match.DestinationPort) {
				if side == "warden" {
					t.Errorf("warden's inbound chain %q matches no port of the workload", c.Name)
				}
				continue
			}
			k := fmt.Sprintf("port %d transport %q", c.Match.DestinationPort, c.Match.TransportProtocol)
			out[k] = append(out[k], c)
		}
		return out
	}
	w, i := group("warden", warden), group("Istio", istio)
	if len(w) == 0 || len(i) == 0 {
		t.Fatalf("sidecar inbound: warden has %d port chains, Istio %d", len(w), len(i))
	}
	n := 0
	for _, k := range slices.Sorted(maps.Keys(i)) {
		wcs, ok := w[k]
		if !ok {
			t.Errorf("sidecar inbound %s: Istio has %d chains, warden none", k, len(i[k]))
			continue
		}
		for _, ic := range i[k] {
			for _, wc := range wcs {
				compareChains(t, "sidecar inbound "+k, wc, ic, false)
				n++
			}
		}
	}
	for k := range w {
		if _, ok := i[k]; !ok {
			t.Errorf("sidecar inbound %s: warden has it, Istio not", k)
		}
	}
	return n
}
