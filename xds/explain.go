package xds

import (
	"fmt"
	"slices"
	"strings"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// ExplainRequest is one request (or, on a TCP port, one connection) as it
// reaches a proxy.
type ExplainRequest struct {
	// Port is where it arrives: a sidecar's workload port, a gateway
	// server's port, a proxyless gRPC server's port.
	Port uint32
	// Request is the request as the client sent it: its path before
	// normalization, its headers (an X-Forwarded-For among them), the
	// peer's principal when it came over mTLS (SNI selects a gateway's
	// TLS server). RemoteIP is left empty: the listener decides it.
	Request rbac.Request
	// Claims are the payload of the JWT it carries, its signature taken
	// as valid (nil: none).
	Claims map[string]any
	// Now is when it is evaluated (expiry of Claims).
	Now time.Time
}

// Explanation is what the listener's policy filters decide.
type Explanation struct {
	rbac.Decision
	// Proxy is the kind of proxy ("sidecar", "gateway", "proxyless gRPC
	// server"); Listener and FilterChain name what was evaluated ("" when
	// no filter chain takes the connection), Kind its listener's kind.
	Proxy, Listener, FilterChain string
	Kind                         ListenerKind
	// RemoteIP is the client address remote.ip matched, as the
	// listener's connection manager derives it.
	RemoteIP string
	// Note is what the decision depends on that the proxy's
	// configuration does not show (a proxyless server's environment);
	// "" when nothing.
	Note string
}

func (e Explanation) String() string {
	if e.FilterChain == "" && e.RemoteIP == "" {
		return fmt.Sprintf("%s\n  evaluated: %s, listener %s: no filter chain takes the connection", e.Decision.String(), e.Proxy, e.Listener)
	}
	s := fmt.Sprintf("%s\n  evaluated: %s, listener %s, filter chain %q, remote.ip %s", e.Decision.String(), e.Kind, e.Listener, e.FilterChain, e.RemoteIP)
	if e.Note != "" {
		s += "\n  note: " + e.Note
	}
	return s
}

// Explain runs the policy filters of the listener proxy p (whose
// workload is w) gets for r, in the order the proxy runs them:
// jwt_authn through authn.AdmitJWT and RBAC through rbac.ExplainFilters,
// on the listener's own configuration, so that the explanation and the
// enforcement cannot disagree for any kind of proxy. servers are the
// listener names a proxyless gRPC server asked for.
func (m *Mesh) Explain(p *Proxy, w *Workload, servers []string, r ExplainRequest) (*Explanation, error) {
	cfg, err := m.InboundFor(p, w, servers)
	if err != nil {
		return nil, err
	}
	e := &Explanation{Proxy: "sidecar"}
	switch {
	case p.Type == RouterProxy:
		e.Proxy = "gateway"
	case p.Generator == GeneratorGRPC:
		e.Proxy = "proxyless gRPC server"
	}
	fc, err := m.chainFor(p, cfg, r, e)
	if err != nil || fc == nil {
		return e, err
	}
	// The handshake comes first: a peer it refuses reaches no filter.
	why, note, err := m.handshakeRefusal(fc, p.Namespace, r.Request.Principal)
	if err != nil || why != "" {
		e.Decision = rbac.Decision{Reason: why}
		return e, err
	}
	e.Note = note
	req := r.Request
	req.DestPort = r.Port
	for _, f := range fc.Filters {
		if f.Name == "envoy.filters.network.http_connection_manager" {
			var h hcmv3.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
				return nil, err
			}
			return e, e.http(&h, req, r)
		}
	}
	// TCP: the network RBAC filters, with the connection's own peer.
	var filters []*rbac.Filter
	for _, f := range fc.Filters {
		if f.Name != rbac.NetworkFilter {
			continue
		}
		var c rbacnet.RBAC
		if err := f.GetTypedConfig().UnmarshalTo(&c); err != nil {
			return nil, err
		}
		rf, err := rbac.FilterOf(f.Name, &c)
		if err != nil {
			return nil, err
		}
		filters = append(filters, rf)
	}
	req.RemoteIP = req.SourceIP
	e.RemoteIP = req.RemoteIP
	e.Decision, err = rbac.ExplainFilters(filters, req)
	return e, err
}

// chainFor finds the filter chain r arrives on; nil (with e's decision
// set) when the proxy has none for it, so the connection is closed.
func (m *Mesh) chainFor(p *Proxy, cfg *Config, r ExplainRequest, e *Explanation) (*listenerv3.FilterChain, error) {
	deny := func(format string, args ...any) (*listenerv3.FilterChain, error) {
		e.Decision = rbac.Decision{Reason: fmt.Sprintf(format, args...)}
		return nil, nil
	}
	listeners := map[string]*listenerv3.Listener{}
	var server *listenerv3.Listener
	for _, res := range cfg.Listeners {
		l := res.(*listenerv3.Listener)
		listeners[l.Name] = l
		if l.GetAddress().GetSocketAddress().GetPortValue() == r.Port {
			server = l
		}
	}
	switch {
	case p.Type == RouterProxy:
		e.Listener = fmt.Sprintf("0.0.0.0_%d", r.Port)
		l := listeners[e.Listener]
		if l == nil {
			return deny("the gateway has no server on port %d (no Gateway selecting it has one)", r.Port)
		}
		e.Listener = l.Name
		var fallback *listenerv3.FilterChain
		for _, fc := range l.FilterChains {
			names := fc.GetFilterChainMatch().GetServerNames()
			if len(names) == 0 {
				fallback = fc
			} else if r.Request.SNI != "" && slices.ContainsFunc(names, func(n string) bool { return hostMatches(n, r.Request.SNI) }) {
				return m.chosen(e, fc, l)
			}
		}
		if fallback == nil {
			return deny("no server of the gateway on port %d takes SNI %q: the connection is closed", r.Port, r.Request.SNI)
		}
		return m.chosen(e, fallback, l)
	case p.Generator == GeneratorGRPC:
		if server == nil {
			return deny("the proxyless gRPC server has no listener on port %d (it asks for one per address it listens on: name it with --server)", r.Port)
		}
		e.Listener = server.Name
		return m.chosen(e, server.FilterChains[0], server)
	}
	l := listeners[InboundListener]
	if l == nil {
		return deny("the sidecar has no inbound listener: its workload has no ports")
	}
	e.Listener = l.Name
	// mTLS (a peer principal) takes the TLS chain, plaintext the other.
	want := "raw_buffer"
	if r.Request.Principal != "" {
		want = "tls"
	}
	var any *listenerv3.FilterChain
	for _, fc := range l.FilterChains {
		match := fc.GetFilterChainMatch()
		if match.GetDestinationPort().GetValue() != r.Port {
			continue
		}
		switch match.GetTransportProtocol() {
		case want:
			return m.chosen(e, fc, l)
		case "":
			any = fc
		}
	}
	if any == nil {
		if want == "raw_buffer" {
			return deny("port %d takes mTLS only (STRICT): a plaintext connection (no --source-principal) is refused at the handshake", r.Port)
		}
		return deny("the sidecar has no inbound filter chain for port %d", r.Port)
	}
	return m.chosen(e, any, l)
}

func (m *Mesh) chosen(e *Explanation, fc *listenerv3.FilterChain, l *listenerv3.Listener) (*listenerv3.FilterChain, error) {
	e.FilterChain = fc.Name
	switch {
	case l.Name == InboundListener:
		e.Kind = SidecarInbound
	case strings.HasPrefix(l.Name, ServerListenerName), strings.HasPrefix(l.Name, IstioServerListenerName):
		e.Kind = ProxylessServer
	default:
		e.Kind = GatewayTCP
		for _, f := range fc.Filters {
			if f.Name == "envoy.filters.network.http_connection_manager" {
				e.Kind = GatewayHTTP
			}
		}
	}
	return fc, nil
}

// http runs an HTTP connection manager's filters: the path as the
// connection manager normalizes it, the client address as it derives it
// from X-Forwarded-For, then each RBAC and jwt_authn filter in order.
func (e *Explanation) http(h *hcmv3.HttpConnectionManager, req rbac.Request, r ExplainRequest) error {
	req.Path = rbac.NormalizePath(pathMode(h), req.Path)
	req.RemoteIP = remoteAddress(h, req.SourceIP, req.Headers["x-forwarded-for"])
	e.RemoteIP = req.RemoteIP
	var pending []*rbac.Filter
	var audited, dry []string
	flush := func() (bool, error) {
		d, err := rbac.ExplainFilters(pending, req)
		pending = nil
		if err != nil {
			return false, err
		}
		audited, dry = append(audited, d.Audited...), append(dry, d.DryRun...)
		d.Audited, d.DryRun = audited, dry
		e.Decision = d
		return d.Allowed, nil
	}
	for _, f := range h.HttpFilters {
		switch {
		case f.Name == authn.JWTAuthnFilter:
			if ok, err := flush(); !ok || err != nil {
				return err
			}
			var jwt jwtv3.JwtAuthentication
			if err := f.GetTypedConfig().UnmarshalTo(&jwt); err != nil {
				return err
			}
			adm := authn.AdmitJWT(&jwt, r.Claims, req.Method, req.Path, req.Headers, r.Now)
			if adm.Rejected != "" {
				e.Decision = rbac.Decision{Reason: "jwt_authn answers 401: " + adm.Rejected, Audited: audited, DryRun: dry}
				return nil
			}
			req.JWT, req.Headers = adm.Payload, adm.Headers
		case strings.HasPrefix(f.Name, rbac.HTTPFilter):
			var c rbachttp.RBAC
			if err := f.GetTypedConfig().UnmarshalTo(&c); err != nil {
				return err
			}
			rf, err := rbac.FilterOf(f.Name, &c)
			if err != nil {
				return err
			}
			pending = append(pending, rf)
		}
	}
	_, err := flush()
	return err
}

// pathMode is the pathNormalization a connection manager applies.
func pathMode(h *hcmv3.HttpConnectionManager) string {
	switch {
	case h.GetNormalizePath() != nil && !h.GetNormalizePath().GetValue():
		return rbac.PathNone
	case h.GetPathWithEscapedSlashesAction() == hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		return rbac.PathDecodeAndMergeSlashes
	case h.GetMergeSlashes():
		return rbac.PathMergeSlashes
	}
	return rbac.PathBase
}

// remoteAddress is the client address Envoy derives (its "trusted client
// address", what RBAC's remote_ip matches) from the connection's peer and
// the request's X-Forwarded-For, as its documentation defines it for the
// connection manager's use_remote_address and xff_num_trusted_hops (N):
// with use_remote_address, the Nth address from the right of
// X-Forwarded-For, or the peer when N is 0; without it (a sidecar's
// inbound), the (N+1)th from the right. When X-Forwarded-For holds
// fewer, the peer's.
func remoteAddress(h *hcmv3.HttpConnectionManager, peer, xff string) string {
	var addrs []string
	for a := range strings.SplitSeq(xff, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	n := int(h.GetXffNumTrustedHops())
	if h.GetUseRemoteAddress().GetValue() {
		if n == 0 || len(addrs) < n {
			return peer
		}
		return addrs[len(addrs)-n]
	}
	if len(addrs) < n+1 {
		return peer
	}
	return addrs[len(addrs)-1-n]
}
