package xds

import (
	"fmt"
	"net"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

func subset(dr *api.DestinationRule, name string) *api.Subset {
	for i := range dr.Spec.Subsets {
		if dr.Spec.Subsets[i].Name == name {
			return &dr.Spec.Subsets[i]
		}
	}
	return nil
}

func hashPolicy(c *api.ConsistentHashLB) []*routev3.RouteAction_HashPolicy {
	switch {
	case c.HTTPHeaderName != "":
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: c.HTTPHeaderName}}}}
	case c.HTTPCookie != nil:
		if c.HTTPCookie.Name == "" {
			return nil // reported by applyLB
		}
		// As Istio's ConsistentHashToHashPolicy.
		ck := &routev3.RouteAction_HashPolicy_Cookie{Name: c.HTTPCookie.Name, Path: c.HTTPCookie.Path, Ttl: dur(c.HTTPCookie.TTL)}
		for _, a := range c.HTTPCookie.Attributes {
			ck.Attributes = append(ck.Attributes, &routev3.RouteAction_HashPolicy_CookieAttribute{Name: a.Name, Value: a.Value})
		}
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: ck}}}
	case c.UseSourceIP:
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
	case c.HTTPQueryParameterName != "":
		return []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: c.HTTPQueryParameterName}}}}
	}
	return nil
}

func dur(s string) *durationpb.Duration {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil
	}
	return durationpb.New(d)
}

func u32(n int32) *wrapperspb.UInt32Value {
	if n <= 0 {
		return nil
	}
	return wrapperspb.UInt32(uint32(n))
}

// cluster builds one outbound cluster of s on port p (and subset).
func (g *gen) cluster(s *Service, p ServicePort, subsetName string, dr *api.DestinationRule) *clusterv3.Cluster {
	name := ClusterName(p.Number, subsetName, s.Host)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
	pol := policyFor(dr, subsetName, p.Number)
	switch t := g.discovery(s); t {
	case clusterv3.Cluster_ORIGINAL_DST:
		// A headless service's clients dial a pod's own address, and a
		// ServiceEntry with resolution NONE passes connections through:
		// the connection goes where it was headed, as Istio's
		// PASSTHROUGH clusters do (no endpoints, no load balancing).
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: t}
		c.EdsClusterConfig = nil
		c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		if pol.lb != nil {
			what := "headless service " + s.Host + " (connections go to the pod dialed)"
			if !s.Headless {
				what = "service " + s.Host + " of resolution NONE (connections go to the address dialed)"
			}
			g.report("DestinationRule %s: loadBalancer does not apply to %s; ignored", objKey(dr), what)
			pol.lb = nil
		}
	case clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
		// Envoy resolves the endpoints' names itself; the endpoints are
		// inline, not sent by EDS.
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: t}
		c.EdsClusterConfig = nil
		c.LoadAssignment = g.dnsAssignment(s, p, dr, subsetName, t)
	}
	if g.grpc && strings.HasPrefix(s.Resolution, "DNS") && subsetName == "" {
		g.report("service %s: resolution %s: proxyless gRPC gets an EDS cluster (as from Istio's grpc generator), so endpoints named by a hostname do not resolve", s.Host, s.Resolution)
	}
	id := ""
	if dr != nil {
		id = objKey(dr)
	}
	if pol.lb != nil {
		g.applyLB(c, pol.lb, id)
	}
	applyPool(c, pol.pool, pol.retryBudget)
	if pol.od != nil {
		g.applyOutlier(c, pol.od, id)
	}
	if !g.grpc {
		if opts := g.httpOptions(s, p, pol, id); opts != nil {
			a, _ := anypb.New(opts)
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
		}
	}
	g.clusterTLS(c, s, p, pol.tls, id)
	if pol.proxyProtocol != nil {
		if g.grpc {
			g.report("DestinationRule %s: trafficPolicy.proxyProtocol does not apply to proxyless gRPC clients; ignored", id)
		} else {
			applyProxyProtocol(c, pol.proxyProtocol)
		}
	}
	if pol.tunnel != nil {
		g.reportTunnel(id, pol.tunnel)
	}
	return c
}

// discovery is how s's clusters find their endpoints, as Istio's
// convertResolution (pilot/pkg/networking/core/cluster.go): a headless
// Kubernetes Service forwards to the original destination; a
// ServiceEntry's resolution STATIC is EDS, DNS STRICT_DNS,
// DNS_ROUND_ROBIN LOGICAL_DNS, NONE without endpoints ORIGINAL_DST at a
// sidecar (EDS at a gateway, which cannot pass through). Proxyless gRPC
// has no original destination nor DNS clusters: always EDS, as Istio's
// grpc generator.
func (g *gen) discovery(s *Service) clusterv3.Cluster_DiscoveryType {
	switch {
	case g.grpc:
		return clusterv3.Cluster_EDS
	case s.Headless:
		return clusterv3.Cluster_ORIGINAL_DST
	case s.Resolution == "DNS":
		return clusterv3.Cluster_STRICT_DNS
	case s.Resolution == "DNS_ROUND_ROBIN":
		return clusterv3.Cluster_LOGICAL_DNS
	case s.Resolution == "NONE" && len(s.Endpoints) == 0 && !g.router:
		return clusterv3.Cluster_ORIGINAL_DST
	}
	return clusterv3.Cluster_EDS
}

// dnsAssignment is the inline endpoints of a DNS cluster of s: its
// endpoints (in the subset), or with none listed the host itself on the
// port's target, as Istio makes an instance of a DNS ServiceEntry's host
// (serviceentry/conversion.go). LOGICAL_DNS takes one endpoint, the
// first (reported by EntryReports).
func (g *gen) dnsAssignment(s *Service, p ServicePort, dr *api.DestinationRule, subsetName string, t clusterv3.Cluster_DiscoveryType) *endpointv3.ClusterLoadAssignment {
	var sub *api.Subset
	if dr != nil && subsetName != "" {
		sub = subset(dr, subsetName)
	}
	if len(s.Endpoints) == 0 {
		target := p.Number
		if p.TargetPort != 0 {
			target = p.TargetPort
		}
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(p.Number, subsetName, s.Host)}
		if sub == nil || len(sub.Labels) == 0 {
			cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{Locality: &corev3.Locality{}, LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(s.Host, target)}},
				HealthStatus:   corev3.HealthStatus_HEALTHY,
			}}, LoadBalancingWeight: wrapperspb.UInt32(1)}}
		}
		return cla
	}
	cla := g.loadAssignment(s, p, sub)
	if t == clusterv3.Cluster_LOGICAL_DNS {
		for _, l := range cla.Endpoints {
			l.LbEndpoints = l.LbEndpoints[:1]
		}
	}
	return cla
}

// clusterTLS sets the upstream TLS: the DestinationRule's mode, or
// auto-mTLS (ISTIO_MUTUAL when the destination is in the mesh and not
// DISABLE; for proxyless gRPC, which cannot fall back, only when it is
// STRICT). As Istio's buildUpstreamClusterTLSContext, except where
// Istio would send plaintext for a TLS setting it cannot honour: warden
// keeps TLS and reports (see reportClientTLS).
func (g *gen) clusterTLS(c *clusterv3.Cluster, s *Service, p ServicePort, tls *api.ClientTLSSettings, id string) {
	mode := ""
	if tls != nil {
		mode = tls.Mode
		g.reportClientTLS(tls, id)
	}
	if mode == "" {
		switch m := g.m.effectiveMode(s, p); {
		case s.External:
			return
		case s.Resolution == "NONE" && len(s.Endpoints) == 0:
			// As Istio's BestEffortInferServiceMTLSMode: a passthrough
			// service with no known instance may reach a server outside
			// the mesh, so mTLS is not turned on automatically.
			return
		case m == authn.Strict, m == authn.Permissive && !g.grpc:
			mode = "ISTIO_MUTUAL"
		default:
			return
		}
	}
	var ut *tlsv3.UpstreamTlsContext
	switch mode {
	case "DISABLE":
		return
	case "ISTIO_MUTUAL":
		ids := s.serverIDs(g.m.opts)
		if g.grpc {
			// Istio's grpc generator: the service accounts (with the
			// ServiceEntry's subjectAltNames), exact, untyped.
			ut = &tlsv3.UpstreamTlsContext{CommonTlsContext: g.providerTLS(ids)}
		} else {
			// As Istio: the DestinationRule's sni, else the cluster's
			// mesh SNI.
			sni := fmt.Sprintf("outbound_.%d_._.%s", p.Number, s.Host)
			if tls != nil && tls.SNI != "" {
				sni = tls.SNI
			}
			var err error
			if ut, err = g.m.authn.UpstreamTLS(sni); err != nil {
				g.report("service %s: %v", s.Host, err)
				return
			}
			// As Istio (cluster_tls.go buildUpstreamTLSSettings): the
			// DestinationRule's subjectAltNames when it lists them,
			// else the service accounts.
			if tls != nil && len(tls.SubjectAltNames) > 0 {
				ids = tls.SubjectAltNames
			}
			ut.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames = sanMatchers(ids)
			if g.m.opts.SDSCluster == "" {
				adsSDS(ut.CommonTlsContext)
			}
		}
	case "SIMPLE", "MUTUAL":
		ut = &tlsv3.UpstreamTlsContext{Sni: tls.SNI, CommonTlsContext: &tlsv3.CommonTlsContext{}}
		if ut.Sni == "" {
			ut.Sni = s.Host
		}
		vc := &tlsv3.CertificateValidationContext{}
		if tls.InsecureSkipVerify == nil || !*tls.InsecureSkipVerify {
			// As Istio's constructUpstreamTLS: the given roots, else the
			// system's (Istio's agent serves "system" from the OS
			// bundle; the Debian path is the one Istio's proxy image
			// has); the CRL with them.
			ca := tls.CACertificates
			if ca == "" {
				ca = SystemRoots
			}
			vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: ca}}
			if tls.CACrl != "" {
				vc.Crl = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tls.CACrl}}
			}
			sans := tls.SubjectAltNames
			if len(sans) == 0 && s.Entry != "" {
				// As Istio (cluster_tls.go constructUpstreamTLS): a
				// ServiceEntry's service accounts and subjectAltNames when
				// the DestinationRule lists none.
				sans = s.accounts(g.m.opts)
			}
			if len(sans) == 0 && !strings.Contains(ut.Sni, "*") {
				// Istio's auto_san_validation (with auto_sni): the
				// server's certificate must name the host asked for.
				// warden's server name is fixed (sni, else the
				// service's host), so the name checked is that one.
				sans = []string{ut.Sni}
			}
			vc.MatchTypedSubjectAltNames = sanMatchers(sans)
		}
		ut.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
		if mode == "MUTUAL" && tls.ClientCertificate != "" && tls.PrivateKey != "" {
			ut.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{
				CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tls.ClientCertificate}},
				PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: tls.PrivateKey}},
			}}
		}
		if g.grpc {
			g.report("service %s: tls mode %s needs files on the client; proxyless gRPC gets plaintext", s.Host, mode)
			return
		}
	default:
		g.report("service %s: tls mode %s is not supported; plaintext", s.Host, mode)
		return
	}
	a, _ := anypb.New(ut)
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

// SystemRoots is the CA bundle a SIMPLE or MUTUAL DestinationRule
// without caCertificates verifies the server with: Istio's "system"
// roots, the OS bundle, at the path Debian-based proxy images (Istio's
// own) keep it.
const SystemRoots = "/etc/ssl/certs/ca-certificates.crt"

// reportClientTLS names the fields of a DestinationRule's tls that its
// mode does not use. Where Istio would fall back to plaintext (a tls with
// no mode, which Istio reads as DISABLE; MUTUAL without a client
// certificate; credentialName at a sidecar) warden keeps TLS and says so.
func (g *gen) reportClientTLS(t *api.ClientTLSSettings, id string) {
	var unused []string
	add := func(set bool, name string) {
		if set {
			unused = append(unused, name)
		}
	}
	switch t.Mode {
	case "":
		g.report("DestinationRule %s: tls has no mode: Istio reads it as DISABLE and sends plaintext; warden keeps automatic mutual TLS (set mode)", id)
		add(t.SNI != "", "sni")
		add(t.InsecureSkipVerify != nil, "insecureSkipVerify")
		fallthrough
	case "ISTIO_MUTUAL", "DISABLE":
		add(t.ClientCertificate != "", "clientCertificate")
		add(t.PrivateKey != "", "privateKey")
		add(t.CACertificates != "", "caCertificates")
		add(t.CACrl != "", "caCrl")
		add(t.CredentialName != "", "credentialName")
		if t.Mode == "DISABLE" {
			add(t.SNI != "", "sni")
			add(len(t.SubjectAltNames) > 0, "subjectAltNames")
		}
		if t.Mode != "" {
			add(t.InsecureSkipVerify != nil, "insecureSkipVerify")
		}
	case "SIMPLE", "MUTUAL":
		if t.Mode == "SIMPLE" {
			add(t.ClientCertificate != "", "clientCertificate")
			add(t.PrivateKey != "", "privateKey")
		} else if t.ClientCertificate == "" || t.PrivateKey == "" {
			g.report("DestinationRule %s: tls mode MUTUAL needs clientCertificate and privateKey: Istio sends plaintext without them; warden connects with TLS and no client certificate", id)
		}
		if t.CredentialName != "" {
			g.report("DestinationRule %s: tls.credentialName is not supported for a client (Istio fetches it only for a DestinationRule with a workloadSelector or at a gateway, and a sidecar otherwise sends plaintext); warden uses the files (caCertificates, clientCertificate, privateKey)", id)
		}
		if t.InsecureSkipVerify != nil && *t.InsecureSkipVerify {
			add(t.CACertificates != "", "caCertificates")
			add(t.CACrl != "", "caCrl")
			add(len(t.SubjectAltNames) > 0, "subjectAltNames")
		}
	}
	if len(unused) > 0 {
		mode := t.Mode
		if mode == "" {
			mode = "unset"
		}
		g.report("DestinationRule %s: tls %s do not apply to mode %s (nor in Istio); ignored", id, strings.Join(unused, ", "), mode)
	}
}

// serverIDs are the identities a client accepts from s's servers (mesh
// TLS): Istio's service accounts of s (accounts) when there are any;
// else, where Istio would check no name at all, the SPIFFE IDs of its
// endpoints as workloads without a service account (default). Never
// more than Istio accepts.
func (s *Service) serverIDs(o Options) []string {
	if ids := s.accounts(o); len(ids) > 0 {
		return ids
	}
	return s.identities(o, "default")
}

// accounts are Istio's service accounts of s, as its
// PushContext.ServiceAccounts joins them (pilot/pkg/model/push_context.go):
// the SPIFFE IDs of its endpoints' explicit service accounts, then a
// ServiceEntry's subjectAltNames.
func (s *Service) accounts(o Options) []string {
	return s.identities(o, "")
}

func (s *Service) identities(o Options, defaultSA string) []string {
	seen := map[string]bool{}
	var ids []string
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, e := range s.Endpoints {
		sa := e.ServiceAccount
		if sa == "" {
			sa = defaultSA
		}
		if sa != "" {
			add(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", o.TrustDomain.Name(), s.Namespace, sa))
		}
	}
	for _, san := range s.SubjectAltNames {
		add(san)
	}
	return ids
}

// sanMatchers are exact matchers for sans, typed as Envoy's SPIFFE
// validator (which federation uses) requires: Istio's untyped exact
// matchers (util.StringToExactMatch) compare a name with every SAN of
// the certificate, and a SPIFFE ID or other URI can only be a URI SAN,
// an IP address an IP SAN, anything else a DNS name.
func sanMatchers(sans []string) []*tlsv3.SubjectAltNameMatcher {
	var out []*tlsv3.SubjectAltNameMatcher
	for _, san := range sans {
		t := tlsv3.SubjectAltNameMatcher_DNS
		switch {
		case strings.Contains(san, "://"):
			t = tlsv3.SubjectAltNameMatcher_URI
		case net.ParseIP(san) != nil:
			t = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
		}
		out = append(out, &tlsv3.SubjectAltNameMatcher{SanType: t, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}}})
	}
	return out
}

// providerTLS is proxyless gRPC's mesh TLS: identity and roots from the
// bootstrap's certificate provider instance.
func (g *gen) providerTLS(serverIDs []string) *tlsv3.CommonTlsContext {
	inst := g.m.opts.CertProvider
	vc := &tlsv3.CertificateValidationContext{CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: inst, CertificateName: "ROOTCA"}}
	for _, id := range serverIDs {
		m := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}
		//lint:ignore SA1019 grpc-go reads only the deprecated match_subject_alt_names, not the typed matchers
		vc.MatchSubjectAltNames = append(vc.MatchSubjectAltNames, m)
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: inst, CertificateName: "default"},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

// adsSDS points a TLS context's SDS secrets at the ADS stream instead of
// a separate SDS cluster.
func adsSDS(c *tlsv3.CommonTlsContext) {
	for _, s := range c.TlsCertificateSdsSecretConfigs {
		s.SdsConfig = adsSource()
	}
	if cv := c.GetCombinedValidationContext(); cv != nil && cv.ValidationContextSdsSecretConfig != nil {
		cv.ValidationContextSdsSecretConfig.SdsConfig = adsSource()
	}
}

// loadAssignment lists the endpoints of s on port p in a subset.
func (g *gen) loadAssignment(s *Service, p ServicePort, sub *api.Subset) *endpointv3.ClusterLoadAssignment {
	name := ClusterName(p.Number, "", s.Host)
	if sub != nil {
		name = ClusterName(p.Number, sub.Name, s.Host)
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	var lbs []*endpointv3.LbEndpoint
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		if sub != nil && !labelsMatch(sub.Labels, e.Labels) {
			continue
		}
		lb := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(e.Address, e.target(p)),
		}}, HealthStatus: corev3.HealthStatus_HEALTHY}
		if e.Weight > 0 {
			lb.LoadBalancingWeight = wrapperspb.UInt32(e.Weight)
		}
		lbs = append(lbs, lb)
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{Locality: &corev3.Locality{}, LbEndpoints: lbs, LoadBalancingWeight: wrapperspb.UInt32(1)}}
	}
	return cla
}

func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func durationOf(seconds int) *durationpb.Duration {
	return durationpb.New(time.Duration(seconds) * time.Second)
}

func staticAssignment(name, ip string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(ip, port)}},
	}}}}}
}
