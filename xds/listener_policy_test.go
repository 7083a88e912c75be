package xds_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/rbac"
	"github.com/wardenmesh/warden/xds"
)

// Every listener that carries traffic to a workload enforces the
// policies that select it. For each kind of listener (xds.ListenerKinds)
// a proxy of that kind gets a mesh-wide policy of one action at a time,
// and every filter chain of its listeners must hold the filter that
// enforces it, or the proxy's reports must say why it cannot. A listener
// kind added without joining this table fails here; so does a listener
// built without its workload's policy chain.

// policyOfAction is a mesh-wide (root namespace) policy of each action.
var policyOfAction = map[string]string{
	"ALLOW": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]}]`,
	"DENY": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]`,
	"AUDIT": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]`,
	"CUSTOM": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]}]`,
	"JWT": `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://issuer.example.com", jwksUri: "https://issuer.example.com/jwks"}]`,
}

// terminatedTLS adds a TLS server the ingress gateway terminates and then
// forwards as TCP.
const terminatedTLS = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-terminated, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9444, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, credentialName: db-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  gateways: [tls-terminated]
  tcp:
  - match: [{port: 9444}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}}}]
`

// listenerCase is one kind of listener and the proxy that has it.
type listenerCase struct {
	node, generator string
	servers         []string
	// listeners picks the proxy's listeners of this kind.
	listeners func(l *listenerv3.Listener) bool
	// unenforced are the actions this kind cannot run, which the
	// proxy's reports must then name.
	unenforced map[string]string
}

var listenerCases = map[xds.ListenerKind][]listenerCase{
	// An HTTP port (productpage) and a TCP port (tcp-echo).
	xds.SidecarInbound: {
		{node: "sidecar~10.0.0.2~productpage-1.default~default.svc.cluster.local", generator: xds.GeneratorEnvoy,
			listeners: func(l *listenerv3.Listener) bool { return l.Name == xds.InboundListener }},
		{node: "sidecar~10.0.0.3~tcp-echo-1.default~default.svc.cluster.local", generator: xds.GeneratorEnvoy,
			listeners: func(l *listenerv3.Listener) bool { return l.Name == xds.InboundListener }},
	},
	// The ingress gateway's HTTP, HTTPS (SIMPLE, MUTUAL, ISTIO_MUTUAL)
	// servers, and the egress gateway's HTTP server.
	xds.GatewayHTTP: {
		{node: ingressNode, generator: xds.GeneratorEnvoy, listeners: hasHCM(true)},
		{node: egressNode, generator: xds.GeneratorEnvoy, listeners: hasHCM(true)},
	},
	// The ingress gateway's TCP, TLS-terminated and PASSTHROUGH servers.
	xds.GatewayTCP: {{node: ingressNode, generator: xds.GeneratorEnvoy, listeners: hasHCM(false)}},
	xds.ProxylessServer: {{node: "sidecar~10.0.0.2~productpage-1.default~default.svc.cluster.local", generator: xds.GeneratorGRPC,
		servers: []string{xds.ServerListenerName + "10.0.0.2:9080"}, listeners: func(l *listenerv3.Listener) bool { return l.GetApiListener() == nil },
		unenforced: map[string]string{"AUDIT": "AUDIT envoy.filters.http.rbac policies are not enforced by proxyless gRPC servers",
			"CUSTOM": "CUSTOM envoy.filters.http.rbac policies are not enforced by proxyless gRPC servers",
			"JWT":    "RequestAuthentication is not enforced by proxyless gRPC servers"}}},
}

// hasHCM picks the listeners with an HTTP connection manager (http) or
// without one.
func hasHCM(http bool) func(l *listenerv3.Listener) bool {
	return func(l *listenerv3.Listener) bool {
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				if (f.Name == "envoy.filters.network.http_connection_manager") == http {
					return true
				}
			}
		}
		return false
	}
}

func TestEveryListenerEnforcesItsPolicy(t *testing.T) {
	for _, k := range xds.ListenerKinds {
		if len(listenerCases[k]) == 0 {
			t.Errorf("listener kind %s has no case here: add one", k)
		}
	}
	base, _, err := source.Load("testdata/gateway")
	if err != nil {
		t.Fatal(err)
	}
	extra, err := api.Decode([]byte(terminatedTLS))
	if err != nil {
		t.Fatal(err)
	}
	base = append(base, extra...)
	for action, yaml := range policyOfAction {
		policy, err := api.Decode([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		mesh := meshOf(t, append(slices.Clone(base), policy...))
		for kind, cases := range listenerCases {
			for _, c := range cases {
				t.Run(fmt.Sprintf("%s/%s/%s", action, kind, c.node), func(t *testing.T) {
					p, err := xds.ParseNodeID(c.node)
					if err != nil {
						t.Fatal(err)
					}
					p.Generator = c.generator
					cfg, _, err := mesh.ProxyConfig(p, c.servers)
					if err != nil {
						t.Fatal(err)
					}
					if want, ok := c.unenforced[action]; ok {
						if !slices.ContainsFunc(cfg.Reports, func(r string) bool { return strings.Contains(r, want) }) {
							t.Fatalf("%s cannot enforce %s, and no report says so: %q", kind, action, cfg.Reports)
						}
						return
					}
					chains := 0
					for _, r := range cfg.Listeners {
						l := r.(*listenerv3.Listener)
						if !c.listeners(l) {
							continue
						}
						for _, fc := range l.FilterChains {
							chains++
							if err := enforces(fc, action); err != nil {
								t.Errorf("listener %s, filter chain %q: %v", l.Name, fc.Name, err)
							}
						}
					}
					if chains == 0 {
						t.Fatalf("the proxy has no %s listener", kind)
					}
				})
			}
		}
	}
}

// enforces checks that filter chain fc runs action's filter: in its HTTP
// connection manager for HTTP, among its network filters otherwise; a
// TCP chain has nothing to do for a RequestAuthentication.
func enforces(fc *listenerv3.FilterChain, action string) error {
	var names []string
	for _, f := range fc.Filters {
		if f.Name != "envoy.filters.network.http_connection_manager" {
			if a := actionOf(f.Name, f.GetTypedConfig().GetValue(), false); a != "" {
				names = append(names, a)
			}
			continue
		}
		var h hcmv3.HttpConnectionManager
		if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
			return err
		}
		names = names[:0]
		for _, hf := range h.HttpFilters {
			if a := actionOf(hf.Name, hf.GetTypedConfig().GetValue(), true); a != "" {
				names = append(names, a)
			}
		}
		if !slices.Contains(names, action) {
			return fmt.Errorf("its connection manager runs %q, not %s", names, action)
		}
		return nil
	}
	if action == "JWT" || slices.Contains(names, action) {
		return nil
	}
	return fmt.Errorf("its network filters run %q, not %s", names, action)
}

// actionOf names what a filter enforces: an RBAC filter's action, JWT
// for jwt_authn, "" for anything else.
func actionOf(name string, cfg []byte, http bool) string {
	switch {
	case name == authn.JWTAuthnFilter:
		return "JWT"
	case strings.HasPrefix(name, rbac.HTTPFilter) && http, name == rbac.NetworkFilter && !http:
		var m proto.Message = &rbacnet.RBAC{}
		if http {
			m = &rbachttp.RBAC{}
		}
		if err := proto.Unmarshal(cfg, m); err != nil {
			return ""
		}
		f, err := rbac.FilterOf(name, m)
		if err != nil {
			return ""
		}
		return f.Action
	}
	return ""
}
