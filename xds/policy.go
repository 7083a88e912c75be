package xds

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// ListenerKind is the kind of listener traffic reaches a workload on. It
// decides which of the workload's policy filters the proxy can run
// there; every listener that carries traffic names its kind and takes
// its policy filters from workloadPolicy, so that no listener is built
// without the policy that selects its workload.
type ListenerKind int

// Listener kinds.
const (
	// SidecarInbound is an Envoy sidecar's virtualInbound filter chain
	// for one port (HTTP or TCP).
	SidecarInbound ListenerKind = iota
	// GatewayHTTP is an ingress or egress gateway server that speaks
	// HTTP: plaintext, or HTTPS with TLS terminated.
	GatewayHTTP
	// GatewayTCP is a gateway server that forwards bytes: TCP, TLS
	// terminated, or TLS passed through by SNI.
	GatewayTCP
	// ProxylessServer is a proxyless gRPC server's listener: grpc-go
	// runs the HTTP RBAC filter (ALLOW and DENY) and nothing else.
	ProxylessServer
)

// ListenerKinds lists every kind (tests walk them all).
var ListenerKinds = []ListenerKind{SidecarInbound, GatewayHTTP, GatewayTCP, ProxylessServer}

var listenerKindNames = map[ListenerKind]string{SidecarInbound: "sidecar inbound", GatewayHTTP: "gateway HTTP server",
	GatewayTCP: "gateway TCP server", ProxylessServer: "proxyless gRPC server"}

func (k ListenerKind) String() string {
	if n, ok := listenerKindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("ListenerKind(%d)", int(k))
}

// workloadPolicy is a workload's authentication and authorization policy
// compiled once, from which each of its listeners takes its filters.
type workloadPolicy struct {
	authn     *authn.Output
	http, tcp *rbac.Output
}

// policyOf compiles the policies that select w.
func (m *Mesh) policyOf(w *Workload) (*workloadPolicy, error) {
	an, err := m.authn.Compile(w.authn())
	if err != nil {
		return nil, err
	}
	http, err := m.rbac.Compile(w.rbac(), false)
	if err != nil {
		return nil, err
	}
	tcp, err := m.rbac.Compile(w.rbac(), true)
	if err != nil {
		return nil, err
	}
	return &workloadPolicy{authn: an, http: http, tcp: tcp}, nil
}

// reports are the compilers' reports that hold for every listener.
func (wp *workloadPolicy) reports() []string {
	out := append([]string(nil), wp.authn.Settings.Conflicts...)
	return append(out, wp.http.Reports...)
}

// httpChain is the policy part of an HTTP connection manager's filters
// on a listener of kind k, in Istio's order (its listener builder puts
// the CUSTOM builder's filters first, then authentication, then the
// AUDIT, DENY and ALLOW builder's): the CUSTOM shadow RBAC and ext_authz,
// so that headers the external authorizer sets are seen by what
// follows; jwt_authn; AUDIT, DENY, ALLOW. The router (and fault) go
// after it. What the listener kind cannot run is reported.
func (wp *workloadPolicy) httpChain(k ListenerKind) ([]*hcmv3.HttpFilter, []string) {
	if k == ProxylessServer {
		return wp.grpcChain()
	}
	var custom, authz []*hcmv3.HttpFilter
	for _, f := range wp.http.Filters {
		hf := httpFilter(f.Name, f.Config)
		if f.Action == "CUSTOM" || f.Name == rbac.ExtAuthz {
			custom = append(custom, hf)
		} else {
			authz = append(authz, hf)
		}
	}
	out := custom
	if jwt := wp.authn.JWT; jwt != nil {
		if k == GatewayHTTP {
			// A gateway picks its route after jwt_authn may have written
			// claim_to_headers: Istio clears the route cache for routers.
			jwt = proto.Clone(jwt).(*jwtv3.JwtAuthentication)
			for _, p := range jwt.Providers {
				p.ClearRouteCache = true
			}
		}
		out = append(out, httpFilter(authn.JWTAuthnFilter, jwt))
	}
	return append(out, authz...), nil
}

// grpcChain is what grpc-go can enforce: the HTTP RBAC filter's ALLOW
// and DENY rules. AUDIT and CUSTOM are reported; so is a
// RequestAuthentication, as grpc-go runs no jwt_authn (a request
// principal never matches there, as in Istio's gRPC generator).
func (wp *workloadPolicy) grpcChain() ([]*hcmv3.HttpFilter, []string) {
	var out []*hcmv3.HttpFilter
	var reports []string
	if wp.authn.JWT != nil {
		reports = append(reports, "RequestAuthentication is not enforced by proxyless gRPC servers (grpc-go has no jwt_authn): requests carry no request principal there")
	}
	for _, f := range wp.http.Filters {
		cfg, isHTTP := f.Config.(*rbachttp.RBAC)
		switch {
		case !isHTTP || (f.Action != "ALLOW" && f.Action != "DENY"):
			reports = append(reports, fmt.Sprintf("%s %s policies are not enforced by proxyless gRPC servers", f.Action, f.Name))
			continue
		case cfg.GetRules() == nil:
			continue // dry-run only
		}
		name := f.Name
		if f.Action == "DENY" {
			// grpc-go refuses two HTTP filters of one name; Istio names
			// the DENY one apart.
			name += ".DENY"
		}
		out = append(out, httpFilter(name, cfg))
	}
	return out, reports
}

// networkChain is the policy part of a TCP filter chain on a listener of
// kind k, in Istio's order: CUSTOM (shadow RBAC and ext_authz), then
// AUDIT, DENY, ALLOW; tcp_proxy goes after it.
func (wp *workloadPolicy) networkChain(ListenerKind) []*listenerv3.Filter {
	var custom, authz []*listenerv3.Filter
	for _, f := range wp.tcp.Filters {
		nf := &listenerv3.Filter{Name: f.Name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(f.Config)}}
		if f.Action == "CUSTOM" || f.Name == rbac.NetworkExtAuthz {
			custom = append(custom, nf)
		} else {
			authz = append(authz, nf)
		}
	}
	return append(custom, authz...)
}

// JWT is the jwt_authn configuration the policies selecting w compile
// to (nil: no RequestAuthentication or legacy origin applies).
func (m *Mesh) JWT(w *Workload) (*jwtv3.JwtAuthentication, error) {
	an, err := m.authn.Compile(w.authn())
	if err != nil {
		return nil, err
	}
	return an.JWT, nil
}
