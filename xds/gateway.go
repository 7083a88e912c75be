package xds

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
)

// CredentialPrefix starts the SDS name of a Gateway's credentialName, as
// istiod names it: kubernetes://<name> for the certificate and key,
// kubernetes://<name>-cacert for the CA certificates of MUTUAL.
const (
	CredentialPrefix = "kubernetes://"
	CACertSuffix     = "-cacert"
)

// RouterGateways are the Gateways whose selector matches w (an empty
// selector matches every gateway proxy), in namespace/name order.
func (m *Mesh) RouterGateways(w *Workload) []*api.Gateway {
	var out []*api.Gateway
	for _, gw := range m.gateways {
		if labelsMatch(gw.Spec.Selector, w.Labels) {
			out = append(out, gw)
		}
	}
	return out
}

// gwServer is one Gateway server with its Gateway.
type gwServer struct {
	gw  *api.Gateway
	srv *api.Server
	idx int
}

func (s gwServer) name() string { return s.gw.Metadata.Namespace + "/" + s.gw.Metadata.Name }

func (s gwServer) tlsMode() string {
	if s.srv.TLS == nil {
		return ""
	}
	return s.srv.TLS.Mode
}

// kind is how the server's connections are handled: "http" (plaintext
// HTTP), "https" (TLS terminated, then HTTP), "tls" (TLS terminated, then
// TCP), "passthrough" (routed by SNI, not terminated) or "tcp".
func (s gwServer) kind() string {
	proto := strings.ToUpper(s.srv.Port.Protocol)
	mode := s.tlsMode()
	switch {
	case proto == "HTTPS" && mode == "PASSTHROUGH", proto == "TLS" && (mode == "PASSTHROUGH" || mode == ""):
		return "passthrough"
	case proto == "HTTPS":
		return "https"
	case proto == "TLS":
		return "tls"
	case proto == "HTTP" || proto == "HTTP2" || proto == "GRPC" || proto == "GRPC-WEB":
		return "http"
	}
	return "tcp"
}

// Gateway builds a gateway proxy's (node type router) own configuration
// from the Gateways selecting it, as istiod does for routers: a listener
// per server port; HTTP servers share route table http.<port>; each HTTPS
// server gets a filter chain (SNI from its hosts) terminating TLS with
// its credentials and route table https.<port>.<port name>.<gateway>.<ns>;
// TLS PASSTHROUGH servers route by SNI from VirtualService tls rules; TCP
// servers proxy by tcp rules. Routes come from the VirtualServices whose
// gateways name the Gateway, for the hosts the server exposes.
func (m *Mesh) Gateway(p *Proxy, w *Workload) (*Config, error) {
	out := &Config{}
	g := &gen{m: m, ns: p.Namespace}
	// The policies that select the gateway's workload, enforced on every
	// server it carries traffic for, as on a sidecar's inbound ports.
	wp, err := m.policyOf(w)
	if err != nil {
		return nil, err
	}
	out.Reports = append(out.Reports, wp.reports()...)
	httpChain, _ := wp.httpChain(GatewayHTTP)
	tcpChain := wp.networkChain(GatewayTCP)
	hcm := func(route string) *listenerv3.Filter {
		return hcmFilter(m.gatewayHCM("outbound_"+route, route, httpChain))
	}
	byPort := map[uint32][]gwServer{}
	for _, gw := range m.RouterGateways(w) {
		for i := range gw.Spec.Servers {
			srv := &gw.Spec.Servers[i]
			s := gwServer{gw, srv, i}
			id := fmt.Sprintf("Gateway %s: servers[%d]", s.name(), i)
			if srv.Bind != "" {
				g.report("%s: bind is not supported; the server listens on 0.0.0.0", id)
			}
			if srv.DefaultEndpoint != "" {
				g.report("%s: defaultEndpoint is not supported; ignored", id)
			}
			if srv.Port.TargetPort != 0 {
				g.report("%s: port.targetPort is not supported; the listener is on port.number %d", id, srv.Port.Number)
			}
			switch s.tlsMode() {
			case "AUTO_PASSTHROUGH":
				g.report("%s: tls mode AUTO_PASSTHROUGH (multi-network) is not supported; the server is skipped", id)
				continue
			case "OPTIONAL_MUTUAL":
				g.report("%s: tls mode OPTIONAL_MUTUAL is not supported; the server is skipped", id)
				continue
			}
			if k := strings.ToUpper(srv.Port.Protocol); k != "HTTP" && k != "HTTP2" && k != "GRPC" && k != "GRPC-WEB" && k != "HTTPS" && k != "TLS" && k != "TCP" {
				g.report("%s: protocol %s is served as TCP", id, srv.Port.Protocol)
			}
			byPort[srv.Port.Number] = append(byPort[srv.Port.Number], s)
		}
	}
	ports := make([]uint32, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	for _, port := range ports {
		l := &listenerv3.Listener{Name: fmt.Sprintf("0.0.0.0_%d", port), Address: socketAddress("0.0.0.0", port), TrafficDirection: corev3.TrafficDirection_OUTBOUND}
		var http []gwServer
		inspect := false
		for _, s := range byPort[port] {
			switch s.kind() {
			case "http":
				http = append(http, s)
			case "https":
				rc := g.gatewayRoutes(fmt.Sprintf("https.%d.%s.%s.%s", port, s.srv.Port.Name, s.gw.Metadata.Name, s.gw.Metadata.Namespace), []gwServer{s})
				out.Routes = append(out.Routes, rc)
				fc := &listenerv3.FilterChain{Name: rc.Name, FilterChainMatch: sniMatch(s.srv.Hosts), Filters: []*listenerv3.Filter{hcm(rc.Name)}}
				if fc.TransportSocket = g.serverTLS(s, &out.Credentials); fc.TransportSocket == nil {
					continue
				}
				inspect = inspect || fc.FilterChainMatch != nil
				l.FilterChains = append(l.FilterChains, fc)
			case "tls":
				fc := g.gatewayTCP(s, port, tcpChain)
				if fc == nil {
					continue
				}
				fc.FilterChainMatch = sniMatch(s.srv.Hosts)
				if fc.TransportSocket = g.serverTLS(s, &out.Credentials); fc.TransportSocket == nil {
					continue
				}
				inspect = inspect || fc.FilterChainMatch != nil
				l.FilterChains = append(l.FilterChains, fc)
			case "passthrough":
				l.FilterChains = append(l.FilterChains, g.gatewayPassthrough(s, port, tcpChain)...)
				inspect = true
			case "tcp":
				if fc := g.gatewayTCP(s, port, tcpChain); fc != nil {
					l.FilterChains = append(l.FilterChains, fc)
				}
			}
		}
		if len(http) > 0 {
			rc := g.gatewayRoutes(fmt.Sprintf("http.%d", port), http)
			out.Routes = append(out.Routes, rc)
			l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Name: rc.Name, Filters: []*listenerv3.Filter{hcm(rc.Name)}})
		}
		if inspect {
			l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&tlsinspector.TlsInspector{})}}}
		}
		if dup := duplicateMatch(l.FilterChains); dup != "" {
			g.report("port %d: %s; the port is not served", port, dup)
			continue
		}
		if len(l.FilterChains) > 0 {
			out.Listeners = append(out.Listeners, l)
		}
	}
	slices.Sort(out.Credentials)
	out.Credentials = slices.Compact(out.Credentials)
	out.Reports = append(out.Reports, g.reports...)
	return out, out.Validate()
}

// duplicateMatch names two filter chains Envoy would refuse for having
// the same match (e.g. two HTTPS servers with the same hosts on a port).
func duplicateMatch(fcs []*listenerv3.FilterChain) string {
	seen := map[string]string{}
	for _, fc := range fcs {
		k := strings.Join(fc.GetFilterChainMatch().GetServerNames(), ",")
		if prev, ok := seen[k]; ok {
			return fmt.Sprintf("%s and %s match the same server names (%q)", prev, fc.Name, k)
		}
		seen[k] = fc.Name
	}
	return ""
}

// serverHosts are a server's hosts without their namespace part.
func serverHosts(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		if _, host, ok := strings.Cut(h, "/"); ok {
			h = host
		}
		out = append(out, h)
	}
	return out
}

// sniMatch matches a server's hosts by SNI; nil for "*" (any).
func sniMatch(hosts []string) *listenerv3.FilterChainMatch {
	var names []string
	for _, h := range serverHosts(hosts) {
		if h == "*" {
			return nil
		}
		names = append(names, h)
	}
	sort.Strings(names)
	return &listenerv3.FilterChainMatch{ServerNames: slices.Compact(names)}
}

// exposes says whether server s exposes a VirtualService of namespace ns
// for host: a server host "ns/host" ("*" any namespace, "." the
// Gateway's) whose host and the VirtualService's overlap.
func (s gwServer) exposes(ns, host string) (string, bool) {
	for _, h := range s.srv.Hosts {
		hns, hh, ok := strings.Cut(h, "/")
		if !ok {
			hns, hh = "*", h
		}
		if hns == "." {
			hns = s.gw.Metadata.Namespace
		}
		if hns != "*" && hns != ns {
			continue
		}
		switch {
		case hostMatches(hh, host):
			return host, true // the VirtualService's host is the narrower
		case hostMatches(host, hh):
			return hh, true
		}
	}
	return "", false
}

// bound says whether v is bound to server s's Gateway: its gateways name
// it as <namespace>/<name>, or <name> in v's namespace.
func bound(gateways []string, vsNS string, s gwServer) bool {
	return namesGateway(gateways, vsNS, s.name())
}

// namesGateway says whether gateways (as a VirtualService of namespace
// vsNS writes them) name the Gateway gwID (namespace/name).
func namesGateway(gateways []string, vsNS, gwID string) bool {
	for _, g := range gateways {
		if !strings.Contains(g, "/") {
			g = vsNS + "/" + g
		}
		if g == gwID {
			return true
		}
	}
	return false
}

func exactMatcher(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// boundVS is a VirtualService bound to a server, with the hosts it serves
// there.
type boundVS struct {
	vs    *api.VirtualService
	hosts []string
}

// bound lists the VirtualServices bound to s, in namespace/name order.
func (g *gen) bound(s gwServer) []boundVS {
	var out []boundVS
	for _, v := range g.m.vs {
		if !bound(v.Spec.Gateways, v.Metadata.Namespace, s) || !exported(v.Spec.ExportTo, v.Metadata.Namespace, g.ns) {
			continue
		}
		var hosts []string
		for _, h := range v.Spec.Hosts {
			if d, ok := s.exposes(v.Metadata.Namespace, h); ok {
				hosts = append(hosts, d)
			}
		}
		if len(hosts) > 0 {
			out = append(out, boundVS{v, hosts})
		}
	}
	return out
}

// gatewayRoutes is the route table of HTTP servers: a virtual host per
// exposed VirtualService host (the first VirtualService for a host
// wins, reported), and for httpsRedirect servers, TLS required.
func (g *gen) gatewayRoutes(name string, servers []gwServer) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false)}
	seen := map[string]string{}
	for _, s := range servers {
		gwID := s.name()
		for _, b := range g.bound(s) {
			if len(b.vs.Spec.HTTP) == 0 {
				continue // TCP or TLS routes only
			}
			for _, host := range b.hosts {
				if prev, ok := seen[host]; ok {
					if prev != objKey(b.vs) {
						g.report("Gateway %s: host %s is routed by VirtualService %s; %s is ignored for it", gwID, host, prev, objKey(b.vs))
					}
					continue
				}
				seen[host] = objKey(b.vs)
				gg := &gen{m: g.m, ns: g.ns, gateway: gwID, tls: s.srv.TLS != nil && strings.EqualFold(s.srv.Port.Protocol, "HTTPS")}
				port := ServicePort{Number: s.srv.Port.Number, Name: s.srv.Port.Name, Protocol: "HTTP"}
				vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", host, port.Number), Domains: []string{host, fmt.Sprintf("%s:*", host)},
					Routes: gg.vsRoutes(b.vs, &Service{Host: host, Namespace: b.vs.Metadata.Namespace}, port)}
				if host == "*" {
					vh.Domains = []string{"*"}
				}
				g.reports = append(g.reports, gg.reports...)
				if s.srv.TLS != nil && s.srv.TLS.HTTPSRedirect {
					vh.RequireTls = routev3.VirtualHost_ALL
				}
				if len(vh.Routes) == 0 {
					g.report("Gateway %s: VirtualService %s has no HTTP route for it; host %s answers 404", gwID, objKey(b.vs), host)
					continue
				}
				rc.VirtualHosts = append(rc.VirtualHosts, vh)
			}
		}
	}
	sort.SliceStable(rc.VirtualHosts, func(i, j int) bool { return rc.VirtualHosts[i].Name < rc.VirtualHosts[j].Name })
	rc.VirtualHosts = append(rc.VirtualHosts, notFound())
	return rc
}

// gatewayHCM is a gateway server's HTTP connection manager, as Istio
// builds it for a router: routes over RDS; the workload's policy filters
// (chain), then fault, CORS and router (envoyRouteFilters); the client's
// address taken as Envoy's edge proxy takes it (use_remote_address, and
// the mesh's numTrustedProxies for X-Forwarded-For hops added by load
// balancers in front), so that remoteIpBlocks see the real client rather
// than an X-Forwarded-For it wrote; client certificate details sanitized
// and set (SANITIZE_SET); paths normalized as on a sidecar's inbound.
func (m *Mesh) gatewayHCM(prefix, route string, chain []*hcmv3.HttpFilter) *hcmv3.HttpConnectionManager {
	h := rdsHCM(prefix, route, append(slices.Clone(chain), envoyRouteFilters()...))
	h.UseRemoteAddress = wrapperspb.Bool(true)
	h.XffNumTrustedHops = m.opts.GatewayTrustedProxies
	h.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
	h.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Subject: wrapperspb.Bool(true), Cert: true, Dns: true, Uri: true}
	return normalizePaths(h, m.opts.PathNormalization)
}

// gatewayTCP proxies a TCP (or terminated TLS) server's connections to
// the first tcp rule of a bound VirtualService that applies to the port,
// after the workload's network policy filters (chain).
func (g *gen) gatewayTCP(s gwServer, port uint32, chain []*listenerv3.Filter) *listenerv3.FilterChain {
	for _, b := range g.bound(s) {
		for i, r := range b.vs.Spec.TCP {
			if !g.l4Applies(r.Match, b.vs, i, s, port) {
				continue
			}
			proxy := g.l4Proxy(b.vs, r.Route, port)
			if proxy == nil {
				g.report("VirtualService %s: tcp[%d] has no destination; skipped", objKey(b.vs), i)
				continue
			}
			return &listenerv3.FilterChain{Name: fmt.Sprintf("%s.%d", s.name(), port), Filters: append(slices.Clone(chain), proxy)}
		}
	}
	g.report("Gateway %s: servers[%d] (port %d, %s) has no VirtualService tcp route bound to it; not served", s.name(), s.idx, port, s.srv.Port.Protocol)
	return nil
}

// gatewayPassthrough routes a PASSTHROUGH server's TLS connections by SNI
// from the tls rules of the VirtualServices bound to it, after the
// workload's network policy filters (chain), as Istio's gateway does.
func (g *gen) gatewayPassthrough(s gwServer, port uint32, chain []*listenerv3.Filter) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	for _, b := range g.bound(s) {
		for i, r := range b.vs.Spec.TLS {
			for j, mt := range r.Match {
				if mt.Port != 0 && mt.Port != port || (len(mt.Gateways) > 0 && !bound(mt.Gateways, b.vs.Metadata.Namespace, s)) {
					continue
				}
				var snis []string
				for _, h := range mt.SniHosts {
					if _, ok := s.exposes(b.vs.Metadata.Namespace, h); ok {
						snis = append(snis, h)
					}
				}
				if len(snis) == 0 {
					continue
				}
				if len(mt.DestinationSubnets) > 0 || len(mt.SourceLabels) > 0 || mt.SourceNamespace != "" {
					g.report("VirtualService %s: tls[%d].match[%d]: destinationSubnets, sourceLabels and sourceNamespace are not supported at a gateway; the match is skipped", objKey(b.vs), i, j)
					continue
				}
				proxy := g.l4Proxy(b.vs, r.Route, port)
				if proxy == nil {
					g.report("VirtualService %s: tls[%d] has no destination; skipped", objKey(b.vs), i)
					continue
				}
				sort.Strings(snis)
				out = append(out, &listenerv3.FilterChain{Name: fmt.Sprintf("%s.%d.%s", s.name(), port, strings.Join(snis, ",")),
					FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: snis},
					Filters:          append(slices.Clone(chain), proxy)})
			}
		}
	}
	if len(out) == 0 {
		g.report("Gateway %s: servers[%d] (port %d, PASSTHROUGH) has no VirtualService tls route bound to it; not served", s.name(), s.idx, port)
	}
	return out
}

func (g *gen) l4Applies(ms []api.L4MatchAttributes, v *api.VirtualService, i int, s gwServer, port uint32) bool {
	if len(ms) == 0 {
		return true
	}
	for j, m := range ms {
		if (m.Port != 0 && m.Port != port) || (len(m.Gateways) > 0 && !bound(m.Gateways, v.Metadata.Namespace, s)) {
			continue
		}
		if len(m.DestinationSubnets) > 0 || m.SourceSubnet != "" || len(m.SourceLabels) > 0 || m.SourceNamespace != "" {
			g.report("VirtualService %s: tcp[%d].match[%d]: destinationSubnets, sourceSubnet, sourceLabels and sourceNamespace are not supported at a gateway; the match is skipped", objKey(v), i, j)
			continue
		}
		return true
	}
	return false
}

// l4Proxy is the tcp_proxy of an L4 route: to its destination, or split
// over its weighted destinations by weight, as Istio's
// buildOutboundNetworkFiltersWithWeightedClusters (a destination of
// weight 0 beside others takes nothing). nil: no destination.
func (g *gen) l4Proxy(v *api.VirtualService, route []api.RouteDestination, port uint32) *listenerv3.Filter {
	var dests []api.RouteDestination
	for _, d := range route {
		if len(route) == 1 || d.Weight > 0 {
			dests = append(dests, d)
		}
	}
	if len(dests) == 0 {
		return nil
	}
	p := ServicePort{Number: port}
	first := g.destinationCluster(dests[0].Destination, p, v.Metadata.Namespace)
	if len(dests) == 1 {
		return tcpProxy(first, first)
	}
	w := &tcpv3.TcpProxy_WeightedCluster{}
	for _, d := range dests {
		w.Clusters = append(w.Clusters, &tcpv3.TcpProxy_WeightedCluster_ClusterWeight{
			Name: g.destinationCluster(d.Destination, p, v.Metadata.Namespace), Weight: uint32(d.Weight)})
	}
	return &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&tcpv3.TcpProxy{
		StatPrefix: first, ClusterSpecifier: &tcpv3.TcpProxy_WeightedClusters{WeightedClusters: w}})}}
}

// serverTLS is an HTTPS or TLS server's downstream TLS: its credentials
// over SDS (credentialName), from files (serverCertificate, privateKey,
// caCertificates), or the mesh identity (ISTIO_MUTUAL); the client
// certificate required for MUTUAL and ISTIO_MUTUAL. SDS names are
// appended to creds.
func (g *gen) serverTLS(s gwServer, creds *[]string) *corev3.TransportSocket {
	t := s.srv.TLS
	id := fmt.Sprintf("Gateway %s: servers[%d].tls", s.name(), s.idx)
	if t == nil {
		g.report("%s is required for protocol %s; the server is skipped", id, s.srv.Port.Protocol)
		return nil
	}
	for name, set := range map[string]bool{"credentialNames": len(t.CredentialNames) > 0, "tlsCertificates": len(t.TLSCertificates) > 0,
		"caCertCredentialName": t.CACertCredentialName != "", "caCrl": t.CACrl != "", "verifyCertificateSpki": len(t.VerifyCertificateSpki) > 0,
		"verifyCertificateHash": len(t.VerifyCertificateHash) > 0, "cipherSuites": len(t.CipherSuites) > 0, "insecureSkipVerify": t.InsecureSkipVerify != nil,
		"minProtocolVersion": t.MinProtocolVersion != "", "maxProtocolVersion": t.MaxProtocolVersion != ""} {
		if set {
			// Any of these could widen what the server accepts if dropped
			// (client verification) or change the protocol: refuse.
			g.report("%s.%s is not supported; the server is skipped", id, name)
			return nil
		}
	}
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2", "http/1.1"}}}
	if s.kind() == "tls" {
		ctx.CommonTlsContext.AlpnProtocols = nil
	}
	cc := ctx.CommonTlsContext
	sds := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
	}
	switch t.Mode {
	case "ISTIO_MUTUAL":
		cc.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sds("default")}
		cc.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds("ROOTCA")}
		ctx.RequireClientCertificate = wrapperspb.Bool(true)
		return tlsSocket(ctx)
	case "SIMPLE", "MUTUAL":
	default:
		g.report("%s.mode %q is not supported; the server is skipped", id, t.Mode)
		return nil
	}
	switch {
	case t.CredentialName != "":
		if t.ServerCertificate != "" || t.PrivateKey != "" || t.CACertificates != "" {
			g.report("%s: serverCertificate, privateKey and caCertificates are not used when credentialName is set (as in Istio)", id)
		}
		name := CredentialPrefix + t.CredentialName
		cc.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{sds(name)}
		*creds = append(*creds, name)
		if t.Mode == "MUTUAL" {
			ca := name + CACertSuffix
			cc.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds(ca)}
			*creds = append(*creds, ca)
		}
	case t.ServerCertificate != "" && t.PrivateKey != "":
		cc.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.ServerCertificate}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.PrivateKey}},
		}}
		if t.Mode == "MUTUAL" {
			if t.CACertificates == "" {
				g.report("%s: MUTUAL needs caCertificates (or credentialName); the server is skipped", id)
				return nil
			}
			cc.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: t.CACertificates}}}}
		}
	default:
		g.report("%s: mode %s needs credentialName, or serverCertificate and privateKey; the server is skipped", id, t.Mode)
		return nil
	}
	if t.Mode == "MUTUAL" {
		ctx.RequireClientCertificate = wrapperspb.Bool(true)
		if len(t.SubjectAltNames) > 0 {
			vc := &tlsv3.CertificateValidationContext{}
			for _, san := range t.SubjectAltNames {
				vc.MatchTypedSubjectAltNames = append(vc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: exactMatcher(san)}, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: exactMatcher(san)})
			}
			switch v := cc.ValidationContextType.(type) {
			case *tlsv3.CommonTlsContext_ValidationContext:
				v.ValidationContext.MatchTypedSubjectAltNames = vc.MatchTypedSubjectAltNames
			case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
				cc.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
					DefaultValidationContext: vc, ValidationContextSdsSecretConfig: v.ValidationContextSdsSecretConfig}}
			}
		}
	} else if len(t.SubjectAltNames) > 0 {
		g.report("%s.subjectAltNames apply to MUTUAL only; ignored for SIMPLE", id)
	}
	return tlsSocket(ctx)
}

func tlsSocket(ctx *tlsv3.DownstreamTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)}}
}
