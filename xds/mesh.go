// Package xds assembles per-proxy Envoy configuration, listeners, routes,
// clusters, endpoints and secrets, from the service registry,
// VirtualService and DestinationRule routing, and the authn and rbac
// compilers, and serves it over ADS (go-control-plane, state of the world
// and delta). Two generators share one model: Envoy sidecars, and
// proxyless gRPC (the subset of xDS grpc-go accepts: API listeners, server
// listeners with certificate-provider TLS and the HTTP RBAC filter).
//
// Outbound configuration (what a proxy may call) depends only on the
// proxy's namespace and generator, so it is built once per namespace and
// shared by every proxy there; inbound configuration (its own listeners,
// authn and RBAC) is built per workload.
package xds

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// Defaults.
const (
	DefaultDomain       = "cluster.local"
	DefaultCertProvider = "default" // grpc bootstrap certificate_providers key
	InboundListener     = "virtualInbound"
	InboundPort         = 15006
	// OutboundListener is where iptables sends an Envoy sidecar's
	// outbound connections (Istio's virtualOutbound on 15001): it hands
	// each to the port listener of its original destination.
	OutboundListener = "virtualOutbound"
	OutboundPort     = 15001
	// BlackHoleCluster has no endpoints: traffic to a destination no
	// listener claims ends there (Istio's REGISTRY_ONLY).
	BlackHoleCluster   = "BlackHoleCluster"
	ServerListenerName = "grpc/server?xds.resource.listening_address="
	// IstioServerListenerName is the same, as Istio's agent writes it in
	// the bootstrap (server_listener_resource_name_template) and istiod
	// serves it. warden serves both.
	IstioServerListenerName = "xds.istio.io/grpc/lds/inbound/"
)

// Options are mesh-wide settings.
type Options struct {
	TrustDomain   spiffeid.TrustDomain // default cluster.local
	Domain        string               // cluster DNS domain, default cluster.local
	RootNamespace string               // default istio-system
	SDSCluster    string               // Envoy cluster for SDS; default: SDS over ADS
	CertProvider  string               // grpc certificate provider instance name
	// TrustDomainAliases are the mesh's other trust domains (Istio's
	// meshConfig trustDomainAliases), for authorization principals.
	TrustDomainAliases []string
	// JWTKeys holds the keys OIDC discovery found for JWT rules that name
	// only an issuer (nil: none known, such tokens are refused).
	JWTKeys authn.KeySource
	// PathNormalization is Istio's meshConfig pathNormalization, applied
	// by every inbound HTTP connection manager (default BASE).
	PathNormalization string
	// GatewayTrustedProxies is Istio's
	// meshConfig.defaultConfig.gatewayTopology.numTrustedProxies: how many
	// proxies (load balancers) in front of the gateways append to
	// X-Forwarded-For; their HTTP connection managers' xff_num_trusted_hops.
	GatewayTrustedProxies uint32
	// TrustBundles are the foreign trust domains' bundles by namespace
	// (SPIFFE Federation): an Envoy workload whose namespace federates
	// validates mesh peers with the SPIFFE certificate validator, one
	// bundle per trust domain, inline. nil: no namespace federates. The
	// configuration reads them when it is built: call the server's
	// TrustBundlesChanged when they change.
	TrustBundles TrustBundles
	// FederatedTrustDomains are the foreign trust domains some namespace
	// federates with (rbac.Options.FederatedTrustDomains: authorization
	// never rewrites their principals, and policy checks know them). A
	// TrustBundles that is also a FederationNames replaces them with its
	// current names whenever the server builds a configuration.
	FederatedTrustDomains []string
}

// FederationNames is the optional side of Options.TrustBundles that names
// the foreign trust domains some namespace federates with now (sorted),
// so that relationships added or removed while the server runs change
// authorization too, not only the bundles.
type FederationNames interface {
	FederatedTrustDomains() []string
}

// WithDefaults is o with its zero values filled in.
func (o Options) WithDefaults() Options {
	o.fill()
	return o
}

func (o *Options) fill() {
	if o.TrustDomain.IsZero() {
		o.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.CertProvider == "" {
		o.CertProvider = DefaultCertProvider
	}
	if o.PathNormalization == "" {
		o.PathNormalization = rbac.PathBase
	}
}

// Mesh is one immutable view of the mesh configuration.
type Mesh struct {
	opts     Options
	services []*Service
	byHost   map[string]*Service
	vs       []*api.VirtualService
	vsByHost map[string][]*api.VirtualService  // by FQDN host, for hosts without a wildcard
	vsWild   []*api.VirtualService             // those with a wildcard host
	dr       map[string][]*api.DestinationRule // by FQDN host
	authn    *authn.Index
	rbac     *rbac.Index
	sidecars sidecarIndex
	gateways []*api.Gateway // by namespace/name
}

// FederatedTrustDomains are the federated trust domains the mesh was
// built with (Options.FederatedTrustDomains).
func (m *Mesh) FederatedTrustDomains() []string { return m.opts.FederatedTrustDomains }

// JWTDiscoveryIssuers are the issuers whose JWT keys the configuration
// leaves to OIDC discovery (authn.Index.DiscoveryIssuers).
func (m *Mesh) JWTDiscoveryIssuers() []string { return m.authn.DiscoveryIssuers() }

// NewMesh indexes the configuration objects and the registry.
func NewMesh(objs []api.Object, services []*Service, opts Options) (*Mesh, error) {
	opts.fill()
	ax, err := authn.NewIndex(objs, authn.Options{RootNamespace: opts.RootNamespace, TrustDomain: opts.TrustDomain, SDSCluster: opts.SDSCluster,
		TrustDomainAliases: opts.TrustDomainAliases, Keys: opts.JWTKeys, Hosts: NewHostIndex(services, opts.Domain)})
	if err != nil {
		return nil, err
	}
	m := &Mesh{opts: opts, services: services, byHost: map[string]*Service{}, dr: map[string][]*api.DestinationRule{}, authn: ax,
		rbac: rbac.NewIndex(objs, rbac.Options{RootNamespace: opts.RootNamespace, TrustDomain: opts.TrustDomain,
			TrustDomainAliases: opts.TrustDomainAliases, FederatedTrustDomains: opts.FederatedTrustDomains, PathNormalization: opts.PathNormalization})}
	m.sidecars = newSidecarIndex(objs)
	for _, s := range services {
		m.byHost[s.Host] = s
	}
	for _, o := range objs {
		switch x := o.(type) {
		case *api.VirtualService:
			m.vs = append(m.vs, x)
		case *api.DestinationRule:
			h := m.fqdn(x.Spec.Host, x.Metadata.Namespace)
			m.dr[h] = append(m.dr[h], x)
		case *api.Gateway:
			m.gateways = append(m.gateways, x)
		}
	}
	sort.Slice(m.gateways, func(i, j int) bool { return objKey(m.gateways[i]) < objKey(m.gateways[j]) })
	sort.Slice(m.vs, func(i, j int) bool { return objKey(m.vs[i]) < objKey(m.vs[j]) })
	m.vsByHost = map[string][]*api.VirtualService{}
	for _, v := range m.vs {
		wild := false
		for _, h := range v.Spec.Hosts {
			if f := m.fqdn(h, v.Metadata.Namespace); strings.Contains(f, "*") {
				wild = true
			} else if l := m.vsByHost[f]; len(l) == 0 || l[len(l)-1] != v {
				m.vsByHost[f] = append(l, v)
			}
		}
		if wild {
			m.vsWild = append(m.vsWild, v)
		}
	}
	for h := range m.dr {
		sort.Slice(m.dr[h], func(i, j int) bool { return objKey(m.dr[h][i]) < objKey(m.dr[h][j]) })
	}
	return m, nil
}

func objKey(o api.Object) string { return o.Meta().Namespace + "/" + o.Meta().Name }

// fqdn resolves a host as written in an object of namespace ns: short
// names are services in ns.
func (m *Mesh) fqdn(host, ns string) string {
	if strings.Contains(host, ".") || host == "*" {
		return host
	}
	return fmt.Sprintf("%s.%s.svc.%s", host, ns, m.opts.Domain)
}

func (m *Mesh) fqdns(hosts []string, ns string) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = m.fqdn(h, ns)
	}
	return out
}

// Services lists the registry.
func (m *Mesh) Services() []*Service { return m.services }

// Workload is the workload behind a proxy, as the registry knows it.
type Workload struct {
	Namespace      string
	ServiceAccount string
	Labels         map[string]string
	Ports          []WorkloadPort
	Services       []string // FQDNs of the services selecting it
	Known          bool     // found in the registry by IP
}

// WorkloadPort is a port the workload serves.
type WorkloadPort struct {
	Number uint32
	Name   string
	HTTP   bool
}

// ID is the workload's SPIFFE ID; zero when the registry doesn't know it.
func (w *Workload) ID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if !w.Known || w.ServiceAccount == "" {
		return spiffeid.ID{}, fmt.Errorf("no service account known")
	}
	return spiffeid.FromSegments(td, "ns", w.Namespace, "sa", w.ServiceAccount)
}

// Workload finds p's workload: the endpoints at p's IP in p's namespace.
func (m *Mesh) Workload(p *Proxy) *Workload {
	w := &Workload{Namespace: p.Namespace}
	ports := map[uint32]WorkloadPort{}
	for _, s := range m.services {
		if s.Namespace != p.Namespace {
			continue
		}
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			if e.Address != p.IP {
				continue
			}
			w.Known = true
			if w.ServiceAccount == "" {
				w.ServiceAccount = e.ServiceAccount
			}
			if w.Labels == nil && len(e.Labels) > 0 {
				w.Labels = e.Labels
			}
			w.Services = append(w.Services, s.Host)
			for _, sp := range s.Ports {
				n := e.target(sp)
				if _, ok := ports[n]; !ok {
					ports[n] = WorkloadPort{Number: n, Name: sp.Name, HTTP: sp.isHTTP()}
				}
			}
		}
	}
	if w.Known && w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	for _, wp := range ports {
		w.Ports = append(w.Ports, wp)
	}
	sort.Slice(w.Ports, func(i, j int) bool { return w.Ports[i].Number < w.Ports[j].Number })
	return w
}

func (w *Workload) authn() authn.Workload {
	aw := authn.Workload{Namespace: w.Namespace, Labels: w.Labels}
	for _, p := range w.Ports {
		aw.Ports = append(aw.Ports, authn.Port{Number: p.Number, Name: p.Name})
	}
	for _, h := range w.Services {
		name, _, _ := strings.Cut(h, ".")
		aw.ServiceNames = append(aw.ServiceNames, name)
	}
	return aw
}

func (w *Workload) rbac() rbac.Workload {
	return rbac.Workload{Namespace: w.Namespace, Labels: w.Labels, ServiceFQDNs: w.Services}
}

// destinationRule is the rule for host as seen from namespace ns: one in
// ns first, then one in the host's namespace, then the root namespace.
func (m *Mesh) destinationRule(host, ns string) *api.DestinationRule {
	rules := m.dr[host]
	svcNS := ""
	if s := m.byHost[host]; s != nil {
		svcNS = s.Namespace
	}
	for _, want := range []string{ns, svcNS, m.opts.RootNamespace} {
		for _, r := range rules {
			if r.Metadata.Namespace == want && exported(r.Spec.ExportTo, r.Metadata.Namespace, ns) && r.Spec.WorkloadSelector == nil {
				return r
			}
		}
	}
	return nil
}

// virtualService is the VirtualService routing host for proxies in ns
// (the mesh gateway) within their Sidecar's egress (nil: no Sidecar): the
// first by namespace/name, the proxy's own namespace first.
func (m *Mesh) virtualService(host, ns string, e *egress) *api.VirtualService {
	var found []*api.VirtualService
	for _, v := range m.vsCandidates(host) {
		if !exported(v.Spec.ExportTo, v.Metadata.Namespace, ns) || !meshGateway(v.Spec.Gateways) {
			continue
		}
		if e != nil && !e.admitsConfig(v.Metadata.Namespace, m.fqdns(v.Spec.Hosts, v.Metadata.Namespace)) {
			continue
		}
		for _, h := range v.Spec.Hosts {
			if hostMatches(m.fqdn(h, v.Metadata.Namespace), host) {
				found = append(found, v)
				break
			}
		}
	}
	for _, v := range found {
		if v.Metadata.Namespace == ns {
			return v
		}
	}
	if len(found) > 0 {
		return found[0]
	}
	return nil
}

// vsCandidates are the VirtualServices that may name host: those naming
// it exactly and those with a wildcard host, in namespace/name order.
func (m *Mesh) vsCandidates(host string) []*api.VirtualService {
	exact := m.vsByHost[host]
	if len(m.vsWild) == 0 {
		return exact
	}
	out := make([]*api.VirtualService, 0, len(exact)+len(m.vsWild))
	i, j := 0, 0
	for i < len(exact) || j < len(m.vsWild) {
		switch {
		case j == len(m.vsWild) || i < len(exact) && objKey(exact[i]) < objKey(m.vsWild[j]):
			out = append(out, exact[i])
			i++
		case i < len(exact) && exact[i] == m.vsWild[j]:
			out = append(out, exact[i])
			i, j = i+1, j+1
		default:
			out = append(out, m.vsWild[j])
			j++
		}
	}
	return out
}

func meshGateway(gws []string) bool {
	if len(gws) == 0 {
		return true
	}
	for _, g := range gws {
		if g == "mesh" {
			return true
		}
	}
	return false
}

func hostMatches(pattern, host string) bool {
	if pattern == "*" || pattern == host {
		return true
	}
	if strings.HasPrefix(pattern, "*.") {
		return strings.HasSuffix(host, pattern[1:])
	}
	return false
}

// effectiveMode is the mTLS mode a destination workload port enforces, for
// auto-mTLS: STRICT when every endpoint is STRICT, DISABLE when every one
// is DISABLE, PERMISSIVE otherwise.
func (m *Mesh) effectiveMode(s *Service, port ServicePort) authn.Mode {
	modes := map[authn.Mode]bool{}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		w := authn.Workload{Namespace: s.Namespace, Labels: e.Labels, Ports: []authn.Port{{Number: e.target(port), Name: port.Name}}, ServiceNames: []string{s.Name}}
		st, err := m.authn.Effective(w)
		if err != nil || len(st.Ports) == 0 {
			modes[authn.Permissive] = true
			continue
		}
		modes[st.Ports[0].Mode] = true
	}
	switch {
	case len(modes) == 1 && modes[authn.Strict]:
		return authn.Strict
	case len(modes) == 1 && modes[authn.Disable]:
		return authn.Disable
	case len(modes) == 0:
		return authn.Permissive
	}
	return authn.Permissive
}

// Selector is the workload labels an object selects by (policies'
// selector.matchLabels, a Sidecar's workloadSelector.labels, a Gateway's
// selector); nil when it has none.
func Selector(o api.Object) map[string]string {
	switch x := o.(type) {
	case *api.PeerAuthentication:
		if x.Spec.Selector != nil {
			return x.Spec.Selector.MatchLabels
		}
	case *api.RequestAuthentication:
		if x.Spec.Selector != nil {
			return x.Spec.Selector.MatchLabels
		}
	case *api.AuthorizationPolicy:
		if x.Spec.Selector != nil {
			return x.Spec.Selector.MatchLabels
		}
	case *api.Sidecar:
		if x.Spec.WorkloadSelector != nil {
			return x.Spec.WorkloadSelector.Labels
		}
	case *api.Gateway:
		return x.Spec.Selector
	}
	return nil
}

// Affects reports whether a change to one of objs changes the inbound
// configuration (authn, authz) of w.
func Affects(objs []api.Object, w *Workload, root string) bool {
	for _, o := range objs {
		m := o.Meta()
		sel := Selector(o)
		switch o.(type) {
		case *api.MeshPolicy, *api.ClusterRbacConfig:
			return true
		case *api.PeerAuthentication, *api.RequestAuthentication, *api.AuthorizationPolicy:
		case *api.Policy, *api.ServiceRole, *api.ServiceRoleBinding, *api.RbacConfig:
		default:
			continue // routing and registry: outbound only
		}
		if m.Namespace == root || (m.Namespace == w.Namespace && labelsMatch(sel, w.Labels)) {
			return true
		}
	}
	return false
}
