package xds

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// Config is generated configuration: resources by type, and what could not
// be expressed.
type Config struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
	// Credentials are the SDS names of Gateway credentials the listeners
	// refer to (kubernetes://<credentialName>[-cacert]).
	Credentials []string
	Reports     []string
	// ListenerRoots and ClusterRoots are the fingerprints
	// (ca.Fingerprint) of the local trust bundle's roots that the
	// listeners and clusters carry inline in Envoy's SPIFFE validator
	// (federate); nil when none of them has one. A root rotation counts
	// a federating proxy as holding a new root only once it ACKed the
	// resources that carry it.
	ListenerRoots, ClusterRoots []string
}

func (c *Config) add(o *Config) {
	c.Listeners = append(c.Listeners, o.Listeners...)
	c.Routes = append(c.Routes, o.Routes...)
	c.Clusters = append(c.Clusters, o.Clusters...)
	c.Endpoints = append(c.Endpoints, o.Endpoints...)
	c.Credentials = append(c.Credentials, o.Credentials...)
	c.Reports = append(c.Reports, o.Reports...)
	c.ListenerRoots = CommonRoots(c.ListenerRoots, o.ListenerRoots)
	c.ClusterRoots = CommonRoots(c.ClusterRoots, o.ClusterRoots)
}

// Validate runs ValidateAll on every resource.
func (c *Config) Validate() error {
	for _, set := range [][]types.Resource{c.Listeners, c.Routes, c.Clusters, c.Endpoints} {
		for _, r := range set {
			if v, ok := r.(interface{ ValidateAll() error }); ok {
				if err := v.ValidateAll(); err != nil {
					return fmt.Errorf("xds: %s: %w", ResourceName(r), err)
				}
			}
		}
	}
	return nil
}

// ResourceName is a resource's name as xDS addresses it.
func ResourceName(r types.Resource) string {
	if n, ok := r.(interface{ GetName() string }); ok && n.GetName() != "" {
		return n.GetName()
	}
	if n, ok := r.(interface{ GetClusterName() string }); ok {
		return n.GetClusterName()
	}
	return fmt.Sprintf("%T", r)
}

func typed(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages linked into the binary
	}
	return a
}

// Outbound builds what proxies of scope sc may call: clusters and
// endpoints of every visible service (and DestinationRule subset), and for
// Envoy one listener and route table per port, for gRPC one API listener
// and route table per service port. Visible means exported to the
// namespace and, when a Sidecar applies, named by its egress hosts (or a
// destination of a VirtualService it names, as in Istio).
func (m *Mesh) Outbound(sc Scope) (*Config, error) {
	ns := sc.Namespace
	g := &gen{m: m, ns: ns, grpc: sc.Generator == GeneratorGRPC, router: sc.Router}
	if sc.Sidecar != nil {
		g.egress, g.reports = compileSidecar(sc.Sidecar, ns, m.opts.RootNamespace)
	}
	out := &Config{}
	byPort := map[uint32][]*Service{}
	for _, v := range g.visible() {
		s, dr := v.s, m.destinationRule(v.s.Host, ns)
		eds := g.discovery(s) == clusterv3.Cluster_EDS
		for _, n := range s.notes {
			g.report("%s", n)
		}
		g.reportUnapplied(s, sc.Router)
		for _, p := range v.ports {
			out.Clusters = append(out.Clusters, g.cluster(s, p, "", dr))
			if eds {
				out.Endpoints = append(out.Endpoints, g.loadAssignment(s, p, nil))
			}
			if dr != nil {
				for i := range dr.Spec.Subsets {
					sub := &dr.Spec.Subsets[i]
					out.Clusters = append(out.Clusters, g.cluster(s, p, sub.Name, dr))
					if eds {
						out.Endpoints = append(out.Endpoints, g.loadAssignment(s, p, sub))
					}
				}
			}
			byPort[p.Number] = append(byPort[p.Number], s)
			if g.grpc && p.isHTTP() && !sc.Router {
				name := fmt.Sprintf("%s:%d", s.Host, p.Number)
				rc := &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{g.virtualHost(s, p, []string{"*"})}}
				out.Routes = append(out.Routes, rc)
				out.Listeners = append(out.Listeners, apiListener(name, name))
				if len(s.Ports) == 1 {
					out.Listeners = append(out.Listeners, apiListener(s.Host, name))
				}
			}
		}
	}
	if !g.grpc && !sc.Router {
		ports := make([]uint32, 0, len(byPort))
		for p := range byPort {
			ports = append(ports, p)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, port := range ports {
			l, rc := g.outboundListener(port, byPort[port])
			if rc != nil {
				out.Routes = append(out.Routes, rc)
			}
			if l != nil {
				out.Listeners = append(out.Listeners, l)
			}
		}
		out.Listeners = append(out.Listeners, virtualOutbound(sc.Transparent))
		out.Clusters = append(out.Clusters, blackHoleCluster())
	}
	out.Reports = g.reports
	if !g.grpc {
		if err := m.federate(ns, out); err != nil {
			return nil, err
		}
	}
	return out, out.Validate()
}

// virtualOutbound is the listener iptables sends a sidecar's outbound
// connections to, as Istio builds it (transparent for TPROXY):
// use_original_dst hands a connection to the port listener (bound to no
// socket) of the address it was headed for, where the filter chains match
// that address; what no listener claims goes to the BlackHoleCluster
// (warden serves only registered destinations: Istio's REGISTRY_ONLY).
// The first chain stops a connection addressed to 15001 itself from
// looping.
func virtualOutbound(transparent bool) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:             OutboundListener,
		Address:          socketAddress("0.0.0.0", OutboundPort),
		UseOriginalDst:   wrapperspb.Bool(true),
		Transparent:      transparentFlag(transparent),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		FilterChains: []*listenerv3.FilterChain{
			{
				Name:             "virtualOutbound-blackhole",
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(OutboundPort)},
				Filters:          []*listenerv3.Filter{tcpProxy(BlackHoleCluster, BlackHoleCluster)},
			},
			{
				Name:    "virtualOutbound-catchall-tcp",
				Filters: []*listenerv3.Filter{tcpProxy(BlackHoleCluster, BlackHoleCluster)},
			},
		},
	}
}

func blackHoleCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 BlackHoleCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationOf(10),
	}
}

// visibleService is a service and the ports of it a proxy sees.
type visibleService struct {
	s     *Service
	ports []ServicePort
}

// visible lists the services g's proxies see, in registry order.
func (g *gen) visible() []visibleService {
	var out []visibleService
	if g.egress == nil {
		for _, s := range g.m.services {
			if s.visibleFrom(g.ns) {
				out = append(out, visibleService{s, s.Ports})
			}
		}
		return out
	}
	// The egress hosts, then the destinations of the VirtualServices in
	// scope for those hosts (one level, as Istio infers them).
	chosen := map[*Service][]ServicePort{}
	for _, s := range g.m.services {
		if !s.visibleFrom(g.ns) {
			continue
		}
		all, ports := g.egress.ports(s)
		for _, p := range s.Ports {
			if all || ports[p.Number] {
				chosen[s] = append(chosen[s], p)
			}
		}
	}
	named := make([]*Service, 0, len(chosen))
	for s := range chosen {
		named = append(named, s)
	}
	for _, s := range named {
		v := g.m.virtualService(s.Host, g.ns, g.egress)
		if v == nil {
			continue
		}
		for _, d := range destinations(v) {
			ds := g.m.byHost[g.m.fqdn(d, v.Metadata.Namespace)]
			if ds != nil && ds.visibleFrom(g.ns) && len(chosen[ds]) < len(ds.Ports) {
				chosen[ds] = ds.Ports
			}
		}
	}
	for _, s := range g.m.services {
		if ps := chosen[s]; len(ps) > 0 {
			out = append(out, visibleService{s, ps})
		}
	}
	return out
}

// destinations are the hosts v's routes and mirrors send to, as written.
func destinations(v *api.VirtualService) []string {
	var out []string
	for _, r := range v.Spec.HTTP {
		for _, d := range r.Route {
			out = append(out, d.Destination.Host)
		}
		if r.Mirror != nil {
			out = append(out, r.Mirror.Host)
		}
		for _, mp := range r.Mirrors {
			out = append(out, mp.Destination.Host)
		}
	}
	for _, r := range v.Spec.TLS {
		for _, d := range r.Route {
			out = append(out, d.Destination.Host)
		}
	}
	for _, r := range v.Spec.TCP {
		for _, d := range r.Route {
			out = append(out, d.Destination.Host)
		}
	}
	return out
}

// outboundListener is an Envoy proxy's listener for one port, as Istio's
// outbound listener builder makes it: the HTTP services on the port share
// a route table chosen by host; each TCP (or unknown-protocol) service is
// matched by its destination address (Service ClusterIPs, ServiceEntry
// addresses and CIDRs; a headless Service's pod addresses) in a filter
// chain of its own. A TCP service with no address can only be the port's
// catch-all, and only when no HTTP service
// claims the port; otherwise it is reported, never silently dropped.
func (g *gen) outboundListener(port uint32, svcs []*Service) (*listenerv3.Listener, *routev3.RouteConfiguration) {
	name := fmt.Sprintf("0.0.0.0_%d", port)
	// Not bound: iptables sends the connection to virtualOutbound, which
	// hands it here with its original destination as the local address
	// (the port may be an application's own, and the prefix ranges below
	// need that address).
	l := &listenerv3.Listener{Name: name, Address: socketAddress("0.0.0.0", port), TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		BindToPort: wrapperspb.Bool(false)}
	var http, wildcard []*Service
	for _, s := range svcs {
		p := portOf(s, port)
		if p.isHTTP() {
			http = append(http, s)
			continue
		}
		addrs := s.Addresses
		if s.Headless {
			// No ClusterIP: clients dial the pods' own addresses.
			addrs = nil
			for _, e := range s.Endpoints {
				addrs = append(addrs, e.Address)
			}
			if len(addrs) == 0 {
				continue // no pod yet: nothing to match
			}
		}
		ranges := prefixRanges(addrs)
		if len(ranges) == 0 {
			wildcard = append(wildcard, s)
			continue
		}
		cluster := ClusterName(port, "", s.Host)
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{
			Name:             cluster,
			FilterChainMatch: &listenerv3.FilterChainMatch{PrefixRanges: ranges},
			Filters:          []*listenerv3.Filter{tcpProxy(cluster, cluster)},
		})
	}
	var rc *routev3.RouteConfiguration
	switch {
	case len(http) > 0:
		rc = &routev3.RouteConfiguration{Name: strconv.Itoa(int(port)), ValidateClusters: wrapperspb.Bool(false)}
		// Envoy refuses a route table in which two virtual hosts share a
		// domain (two ServiceEntries with one address, say): the first
		// service keeps it, as in Istio, and the others are reported.
		seen := map[string]string{}
		for _, s := range http {
			p := portOf(s, port)
			var domains []string
			for _, d := range g.domains(s, p) {
				if first, ok := seen[d]; ok {
					g.report("port %d: %s and %s are both called %s; it routes to %s", port, first, s.Host, d, first)
					continue
				}
				seen[d] = s.Host
				domains = append(domains, d)
			}
			if len(domains) > 0 {
				rc.VirtualHosts = append(rc.VirtualHosts, g.virtualHost(s, p, domains))
			}
		}
		rc.VirtualHosts = append(rc.VirtualHosts, notFound())
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Filters: []*listenerv3.Filter{hcmFilter(rdsHCM(fmt.Sprintf("outbound_%s", name), rc.Name, envoyRouteFilters()))}})
		for _, s := range wildcard {
			g.report("port %d: TCP service %s has no address (ClusterIP, or ServiceEntry addresses), so its traffic cannot be told from the HTTP services' on the port, and reaches their routes; give it an address", port, s.Host)
		}
	case len(wildcard) > 0:
		cluster := ClusterName(port, "", wildcard[0].Host)
		l.FilterChains = append(l.FilterChains, &listenerv3.FilterChain{Filters: []*listenerv3.Filter{tcpProxy(cluster, cluster)}})
		for _, s := range wildcard[1:] {
			g.report("port %d: TCP services %s and %s have no address: the port forwards to %s only; give them addresses", port, wildcard[0].Host, s.Host, wildcard[0].Host)
		}
	}
	if len(l.FilterChains) == 0 {
		return nil, nil
	}
	return l, rc
}

// prefixRanges turns addresses (IPs or CIDRs) into a filter chain match.
func prefixRanges(addrs []string) []*corev3.CidrRange {
	var out []*corev3.CidrRange
	for _, a := range addrs {
		if _, n, err := net.ParseCIDR(a); err == nil {
			ones, _ := n.Mask.Size()
			out = append(out, &corev3.CidrRange{AddressPrefix: n.IP.String(), PrefixLen: wrapperspb.UInt32(uint32(ones))})
			continue
		}
		if ip := net.ParseIP(a); ip != nil {
			bits := uint32(32)
			if ip.To4() == nil {
				bits = 128
			}
			out = append(out, &corev3.CidrRange{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(bits)})
		}
	}
	return out
}

func portOf(s *Service, n uint32) ServicePort {
	for _, p := range s.Ports {
		if p.Number == n {
			return p
		}
	}
	return ServicePort{Number: n}
}

// normalizePaths sets Istio's meshConfig pathNormalization on an inbound
// connection manager, so RBAC sees the path the application will.
func normalizePaths(h *hcmv3.HttpConnectionManager, mode string) *hcmv3.HttpConnectionManager {
	h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_KEEP_UNCHANGED
	switch mode {
	case rbac.PathNone:
		h.NormalizePath = wrapperspb.Bool(false)
	case rbac.PathMergeSlashes:
		h.NormalizePath, h.MergeSlashes = wrapperspb.Bool(true), true
	case rbac.PathDecodeAndMergeSlashes:
		h.NormalizePath, h.MergeSlashes = wrapperspb.Bool(true), true
		h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	default: // BASE
		h.NormalizePath = wrapperspb.Bool(true)
	}
	return h
}

func hcmFilter(h *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	return &listenerv3.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(h)}}
}

func httpFilter(name string, m proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(m)}}
}

// rdsHCM is an HTTP connection manager whose routes come over RDS,
// ending in filters (envoyRouteFilters or grpcRouteFilters).
func rdsHCM(prefix, route string, filters []*hcmv3.HttpFilter) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix:     prefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route, ConfigSource: adsSource()}},
		HttpFilters:    filters,
	}
}

// envoyRouteFilters end an Envoy connection manager whose routes come
// from VirtualServices (a sidecar's outbound, a gateway's servers): fault
// and CORS, which the routes' typed_per_filter_config configure, then
// the router — Istio's order (buildHTTPConnectionManager in
// pilot/pkg/networking/core/listener_builder.go).
func envoyRouteFilters() []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{httpFilter(FaultFilter, &faultv3.HTTPFault{}), httpFilter(CorsFilter, &corsv3.Cors{}), httpFilter(RouterFilter, &routerv3.Router{})}
}

// grpcRouteFilters end a proxyless gRPC client's connection manager:
// grpc-go has fault injection and the router, but no CORS filter (a
// route's corsPolicy is reported).
func grpcRouteFilters() []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{httpFilter(FaultFilter, &faultv3.HTTPFault{}), httpFilter(RouterFilter, &routerv3.Router{})}
}

// transparentFlag is a listener's Transparent for TPROXY interception
// (IP_TRANSPARENT: it accepts connections to addresses not its own); unset
// for REDIRECT, as in Istio.
func transparentFlag(transparent bool) *wrapperspb.BoolValue {
	if !transparent {
		return nil
	}
	return wrapperspb.Bool(true)
}

// originalSrc makes inbound connections to the application come from the
// caller's address, marked 1337 for TPROXY's routing rules (Istio's
// mark).
func originalSrc() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{Name: "envoy.filters.listener.original_src",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&originalsrcv3.OriginalSrc{Mark: 1337})}}
}

func originalDst() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{Name: "envoy.filters.listener.original_dst",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(&originaldstv3.OriginalDst{})}}
}

func tcpProxy(prefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&tcpv3.TcpProxy{
		StatPrefix: prefix, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: cluster}})}}
}

// apiListener is a proxyless gRPC client's listener: the dial target
// name, with an HTTP connection manager fetching its routes over RDS.
func apiListener(name, route string) *listenerv3.Listener {
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: typed(rdsHCM(name, route, grpcRouteFilters()))}}
}

// InboundCluster is the cluster an inbound port forwards to.
func InboundCluster(port uint32) string { return fmt.Sprintf("inbound|%d||", port) }

// Inbound builds w's own listener (Envoy's virtualInbound, with the authn
// filter chains, jwt_authn and RBAC) and the clusters to the application,
// for REDIRECT interception (InboundFor reads the proxy's mode). For
// proxyless gRPC, servers ask for their listeners by address: see
// ServerListener.
func (m *Mesh) Inbound(w *Workload) (*Config, error) { return m.inbound(w, false) }

func (m *Mesh) inbound(w *Workload, transparent bool) (*Config, error) {
	out := &Config{}
	if len(w.Ports) == 0 {
		return out, nil
	}
	wp, err := m.policyOf(w)
	if err != nil {
		return nil, err
	}
	an := wp.authn
	out.Reports = append(out.Reports, wp.reports()...)
	httpFilters, _ := wp.httpChain(SidecarInbound)
	tcpFilters := wp.networkChain(SidecarInbound)
	httpPort := map[uint32]bool{}
	for _, p := range w.Ports {
		httpPort[p.Number] = p.HTTP
		out.Clusters = append(out.Clusters, &clusterv3.Cluster{
			Name:                 InboundCluster(p.Number),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:       durationOf(10),
			LoadAssignment:       staticAssignment(InboundCluster(p.Number), "127.0.0.1", p.Number),
		})
	}
	// original_dst first, as in Istio: the filter chains match the port the
	// connection was headed for, not 15006, where iptables redirected it;
	// with TPROXY, original_src next.
	filters := []*listenerv3.ListenerFilter{originalDst()}
	if transparent {
		filters = append(filters, originalSrc())
	}
	lis := &listenerv3.Listener{Name: InboundListener, Address: socketAddress("0.0.0.0", InboundPort), TrafficDirection: corev3.TrafficDirection_INBOUND,
		Transparent: transparentFlag(transparent), ListenerFilters: append(filters, an.ListenerFilters...)}
	for _, fc := range an.FilterChains {
		fc = proto.Clone(fc).(*listenerv3.FilterChain)
		port := fc.GetFilterChainMatch().GetDestinationPort().GetValue()
		if m.opts.SDSCluster == "" {
			adsDownstream(fc)
		}
		cluster := InboundCluster(port)
		if httpPort[port] {
			filters := append(slices.Clone(httpFilters), httpFilter(RouterFilter, &routerv3.Router{}))
			fc.Filters = []*listenerv3.Filter{hcmFilter(normalizePaths(&hcmv3.HttpConnectionManager{
				StatPrefix: fmt.Sprintf("inbound_%d", port),
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: cluster, VirtualHosts: []*routev3.VirtualHost{{
					Name: cluster, Domains: []string{"*"}, Routes: []*routev3.Route{{
						Name:   "default",
						Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
						Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}, Timeout: durationOf(0)}},
					}},
				}}}},
				HttpFilters:                 filters,
				ForwardClientCertDetails:    hcmv3.HttpConnectionManager_APPEND_FORWARD,
				SetCurrentClientCertDetails: &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Subject: wrapperspb.Bool(true), Uri: true, Dns: true},
			}, m.opts.PathNormalization))}
		} else {
			fc.Filters = append(slices.Clone(tcpFilters), tcpProxy(cluster, cluster))
		}
		lis.FilterChains = append(lis.FilterChains, fc)
	}
	out.Listeners = append(out.Listeners, lis)
	return out, out.Validate()
}

// adsDownstream points an inbound chain's SDS secrets at ADS.
func adsDownstream(fc *listenerv3.FilterChain) {
	ts := fc.GetTransportSocket()
	if ts == nil {
		return
	}
	var d tlsv3.DownstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&d); err != nil {
		return
	}
	adsSDS(d.CommonTlsContext)
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: typed(&d)}
}

// ParseServerListenerName reads the address in a proxyless gRPC server's
// listener name: warden's (grpc/server?xds.resource.listening_address=IP:PORT)
// or Istio's (xds.istio.io/grpc/lds/inbound/IP:PORT).
func ParseServerListenerName(name string) (ip string, port uint32, ok bool) {
	addr, found := strings.CutPrefix(name, ServerListenerName)
	if !found {
		addr, found = strings.CutPrefix(name, IstioServerListenerName)
	}
	if !found {
		return "", 0, false
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil || net.ParseIP(host) == nil {
		return "", 0, false
	}
	n, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return host, uint32(n), true
}

// ServerListener builds a proxyless gRPC server's listener for the
// address it listens on: mTLS when the port is STRICT (certificates from
// the bootstrap's provider instance), and the HTTP RBAC filters grpc-go
// enforces (ALLOW and DENY; AUDIT and CUSTOM are not supported by gRPC
// and are reported).
func (m *Mesh) ServerListener(w *Workload, name string) (*listenerv3.Listener, []string, error) {
	ip, port, ok := ParseServerListenerName(name)
	if !ok {
		return nil, nil, fmt.Errorf("xds: %q is not a gRPC server listener name (%sIP:PORT, or Istio's %sIP:PORT)", name, ServerListenerName, IstioServerListenerName)
	}
	var reports []string
	aw := w.authn()
	if !hasPort(aw.Ports, port) {
		aw.Ports = append(aw.Ports, authn.Port{Number: port})
	}
	st, err := m.authn.Effective(aw)
	if err != nil {
		return nil, nil, err
	}
	mode := st.Mode
	for _, ps := range st.Ports {
		if ps.Port == port {
			mode = ps.Mode
		}
	}
	wp, err := m.policyOf(w)
	if err != nil {
		return nil, nil, err
	}
	reports = append(reports, wp.http.Reports...)
	filters, unenforced := wp.httpChain(ProxylessServer)
	for _, r := range unenforced {
		reports = append(reports, fmt.Sprintf("port %d: %s", port, r))
	}
	filters = append(filters, httpFilter(RouterFilter, &routerv3.Router{}))
	fc := &listenerv3.FilterChain{Name: fmt.Sprintf("inbound|%d", port), Filters: []*listenerv3.Filter{hcmFilter(normalizePaths(&hcmv3.HttpConnectionManager{
		StatPrefix: fmt.Sprintf("inbound_%d", port),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: fmt.Sprintf("inbound|%d", port), VirtualHosts: []*routev3.VirtualHost{{
			Name: "inbound", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
			}},
		}}}},
		HttpFilters: filters,
	}, m.opts.PathNormalization))}}
	switch mode {
	case authn.Strict:
		inst := m.opts.CertProvider
		ctx := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: inst, CertificateName: "default"},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: inst, CertificateName: "ROOTCA"}}},
		}}
		fc.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)}}
	case authn.Permissive:
		reports = append(reports, fmt.Sprintf("port %d: PERMISSIVE cannot be served by a proxyless gRPC server (no protocol sniffing); plaintext is accepted", port))
	}
	lis := &listenerv3.Listener{Name: name, Address: socketAddress(ip, port), TrafficDirection: corev3.TrafficDirection_INBOUND, FilterChains: []*listenerv3.FilterChain{fc}}
	if err := lis.ValidateAll(); err != nil {
		return nil, nil, fmt.Errorf("xds: %s: %w", name, err)
	}
	return lis, reports, nil
}

func hasPort(ps []authn.Port, n uint32) bool {
	for _, p := range ps {
		if p.Number == n {
			return true
		}
	}
	return false
}

// InboundFor is p's own configuration: Inbound for an Envoy sidecar; for
// a proxyless gRPC server, the listeners it asked for by name; for a
// gateway proxy (router), the listeners and routes of its Gateways.
func (m *Mesh) InboundFor(p *Proxy, w *Workload, servers []string) (*Config, error) {
	if p.Type == RouterProxy || p.Generator != GeneratorGRPC {
		var c *Config
		var err error
		if p.Type == RouterProxy {
			c, err = m.Gateway(p, w)
		} else {
			c, err = m.inbound(w, p.Transparent)
		}
		if err != nil {
			return nil, err
		}
		return c, m.federate(p.Namespace, c)
	}
	c := &Config{}
	for _, n := range slices.Sorted(slices.Values(servers)) {
		l, reports, err := m.ServerListener(w, n)
		if err != nil {
			c.Reports = append(c.Reports, err.Error())
			continue
		}
		c.Listeners = append(c.Listeners, l)
		c.Reports = append(c.Reports, reports...)
	}
	return c, nil
}

// ProxyConfig is everything p gets (without secrets), built from scratch:
// for warden proxy-config and tests. servers are the gRPC server
// listener names a proxyless server would ask for.
func (m *Mesh) ProxyConfig(p *Proxy, servers []string) (*Config, *Workload, error) {
	w := m.Workload(p)
	out, err := m.Outbound(m.ScopeOf(p, w))
	if err != nil {
		return nil, nil, err
	}
	in, err := m.InboundFor(p, w, servers)
	if err != nil {
		return nil, nil, err
	}
	out.add(in)
	return out, w, nil
}
