package xds

import (
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
)

// Envoy filter names used in routes.
const (
	CorsFilter   = "envoy.filters.http.cors"
	FaultFilter  = "envoy.filters.http.fault"
	RouterFilter = "envoy.filters.http.router"
)

// gen builds one namespace's outbound configuration for one generator.
type gen struct {
	m       *Mesh
	ns      string
	grpc    bool
	router  bool    // a gateway's outbound clusters (no passthrough)
	egress  *egress // the proxy's Sidecar egress; nil: none applies
	tls     bool    // routes served over TLS (a gateway's HTTPS server)
	gateway string  // the Gateway (namespace/name) routes are for; "": the mesh
	reports []string
}

// report adds a report, once: a rule's fields are compiled for every
// port and service that uses it.
func (g *gen) report(format string, args ...any) {
	r := fmt.Sprintf(format, args...)
	if !slices.Contains(g.reports, r) {
		g.reports = append(g.reports, r)
	}
}

// ClusterName is Istio's outbound cluster name.
func ClusterName(port uint32, subset, host string) string {
	return fmt.Sprintf("outbound|%d|%s|%s", port, subset, host)
}

// virtualHost builds the routes for service s on port p.
func (g *gen) virtualHost(s *Service, p ServicePort, domains []string) *routev3.VirtualHost {
	vh := &routev3.VirtualHost{Name: fmt.Sprintf("%s:%d", s.Host, p.Number), Domains: domains}
	if v := g.m.virtualService(s.Host, g.ns, g.egress); v != nil {
		vh.Routes = g.vsRoutes(v, s, p)
	}
	if len(vh.Routes) == 0 {
		// No VirtualService (or none of its rules apply to this port):
		// the service itself.
		vh.Routes = []*routev3.Route{{
			Name:   "default",
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: g.routeAction(&api.HTTPRoute{}, []api.HTTPRouteDestination{{Destination: api.Destination{Host: s.Host}}}, s, p, "", nil)},
		}}
	}
	return vh
}

// domains are the names a client may use for s on port p: the FQDN and,
// from its own namespace, the short names; each with and without :port.
func (g *gen) domains(s *Service, p ServicePort) []string {
	names := []string{s.Host}
	if s.Namespace == g.ns && strings.HasSuffix(s.Host, ".svc."+g.m.opts.Domain) {
		names = append(names, s.Name, s.Name+"."+s.Namespace, s.Name+"."+s.Namespace+".svc")
	}
	var out []string
	for _, n := range names {
		out = append(out, n, fmt.Sprintf("%s:%d", n, p.Number))
	}
	// As Istio: a headless Service's pods are also called by their own
	// names (<pod>.<service>...), and a client may dial the service's
	// address with no name at all.
	if s.Headless {
		for _, d := range out {
			out = append(out, "*."+d)
		}
	}
	for _, a := range s.Addresses {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			h := ip.String()
			if ip.To4() == nil {
				h = "[" + h + "]"
			}
			out = append(out, h, fmt.Sprintf("%s:%d", h, p.Number))
		}
	}
	return out
}

// notFound is the catch-all virtual host: an unknown host gets a 404.
func notFound() *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: "block_all", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Name:   "block_all",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 404}},
	}}}
}

// vsRoutes converts v's HTTP rules that apply to port p.
func (g *gen) vsRoutes(v *api.VirtualService, s *Service, p ServicePort) []*routev3.Route {
	var out []*routev3.Route
	id := objKey(v)
	for i, r := range v.Spec.HTTP {
		name := r.Name
		if name == "" {
			name = fmt.Sprintf("%s.%d", v.Metadata.Name, i)
		}
		matches := r.Match
		if len(matches) == 0 {
			matches = []api.HTTPMatchRequest{{}}
		}
		for j, mr := range matches {
			if mr.Port != 0 && mr.Port != p.Number {
				continue
			}
			if len(mr.Gateways) > 0 && (g.gateway == "" && !meshGateway(mr.Gateways) || g.gateway != "" && !namesGateway(mr.Gateways, v.Metadata.Namespace, g.gateway)) {
				continue
			}
			if mr.SourceNamespace != "" && mr.SourceNamespace != g.ns {
				continue
			}
			if len(mr.SourceLabels) > 0 {
				g.report("VirtualService %s: http[%d].match[%d].sourceLabels is not supported; the match is skipped", id, i, j)
				continue
			}
			rm, err := g.routeMatch(mr)
			if err != nil {
				g.report("VirtualService %s: http[%d].match[%d]: %v; the match is skipped", id, i, j, err)
				continue
			}
			// As Istio's translateRoute: the rule's name, then the
			// match's; the match's stat prefix.
			rname := name
			if mr.Name != "" {
				rname += "." + mr.Name
			}
			route := &routev3.Route{Name: rname, Match: rm, StatPrefix: mr.StatPrefix}
			// The rule's headers first: a destination's join them.
			if h := r.Headers; h != nil {
				if g.grpc {
					g.report("VirtualService %s: http[%d].headers do not apply to proxyless gRPC clients; ignored", id, i)
				} else {
					route.RequestHeadersToAdd, route.RequestHeadersToRemove = headerOps(h.Request)
					route.ResponseHeadersToAdd, route.ResponseHeadersToRemove = headerOps(h.Response)
				}
			}
			switch {
			case r.Redirect != nil:
				route.Action = &routev3.Route_Redirect{Redirect: redirect(r.Redirect, p.Number, g.tls)}
			case r.DirectResponse != nil:
				st := r.DirectResponse.Status
				if st < 200 || st > 599 {
					g.report("VirtualService %s: http[%d].directResponse.status %d is not an HTTP status (200-599; Istio refuses it); the rule is skipped", id, i, st)
					continue
				}
				dr := &routev3.DirectResponseAction{Status: st}
				if b := r.DirectResponse.Body; b != nil {
					switch {
					case b.String != "":
						dr.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: b.String}}
					case b.Bytes != "":
						raw, err := base64.StdEncoding.DecodeString(b.Bytes)
						if err != nil {
							g.report("VirtualService %s: http[%d].directResponse.body.bytes is not base64; the body is empty", id, i)
							break
						}
						dr.Body = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: raw}}
					}
				}
				route.Action = &routev3.Route_DirectResponse{DirectResponse: dr}
			case r.Delegate != nil:
				g.report("VirtualService %s: http[%d].delegate is not supported; the rule is skipped", id, i)
				continue
			case len(r.Route) == 0:
				g.report("VirtualService %s: http[%d] has no route, redirect or directResponse; the rule is skipped", id, i)
				continue
			default:
				ra := g.routeAction(&r, r.Route, s, p, v.Metadata.Namespace, route)
				if ra == nil {
					g.report("VirtualService %s: http[%d]: no destination has a weight; the rule is skipped", id, i)
					continue
				}
				route.Action = &routev3.Route_Route{Route: ra}
			}
			if r.Fault != nil {
				if f := g.fault(r.Fault, fmt.Sprintf("VirtualService %s: http[%d].fault", id, i)); f != nil {
					perFilter(route, FaultFilter, f)
				}
			}
			if r.CorsPolicy != nil {
				if g.grpc {
					g.report("VirtualService %s: http[%d].corsPolicy does not apply to proxyless gRPC clients (grpc-go has no CORS filter); ignored", id, i)
				} else {
					perFilter(route, CorsFilter, corsPolicy(r.CorsPolicy))
				}
			}
			g.reportRule(&r, fmt.Sprintf("VirtualService %s: http[%d]", id, i))
			out = append(out, route)
		}
	}
	return out
}

func (g *gen) routeMatch(mr api.HTTPMatchRequest) (*routev3.RouteMatch, error) {
	rm := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if mr.IgnoreURICase {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	if u := mr.URI; u != nil {
		switch {
		case u.Exact != "":
			rm.PathSpecifier = &routev3.RouteMatch_Path{Path: u.Exact}
		case u.Prefix != "":
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: u.Prefix}
		case u.Regex != "":
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: u.Regex}}
		}
	}
	add := func(name string, sm api.StringMatch, invert bool) {
		h := &routev3.HeaderMatcher{Name: name, InvertMatch: invert}
		if x := stringMatcher(sm); x != nil {
			h.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: x}
		} else {
			h.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		}
		rm.Headers = append(rm.Headers, h)
	}
	for _, k := range sortedKeys(mr.Headers) {
		add(strings.ToLower(k), mr.Headers[k], false)
	}
	for _, k := range sortedKeys(mr.WithoutHeaders) {
		add(strings.ToLower(k), mr.WithoutHeaders[k], true)
	}
	if mr.Method != nil {
		add(":method", *mr.Method, false)
	}
	if mr.Authority != nil {
		add(":authority", *mr.Authority, false)
	}
	if mr.Scheme != nil {
		add(":scheme", *mr.Scheme, false)
	}
	for _, k := range sortedKeys(mr.QueryParams) {
		x := stringMatcher(mr.QueryParams[k])
		q := &routev3.QueryParameterMatcher{Name: k}
		if x != nil {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: x}
		} else {
			q.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		}
		rm.QueryParameters = append(rm.QueryParameters, q)
	}
	if g.grpc && len(rm.QueryParameters) > 0 {
		return nil, fmt.Errorf("queryParams cannot match gRPC calls")
	}
	return rm, nil
}

func stringMatcher(sm api.StringMatch) *matcherv3.StringMatcher {
	switch {
	case sm.Exact != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: sm.Exact}}
	case sm.Prefix != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: sm.Prefix}}
	case sm.Regex != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: sm.Regex}}}
	}
	return nil
}

// routeAction forwards to dests: a cluster, or weighted clusters.
// vsNS resolves short destination hosts ("" for the service's own route).
// route, when given, takes the single destination's headers.
func (g *gen) routeAction(r *api.HTTPRoute, dests []api.HTTPRouteDestination, s *Service, p ServicePort, vsNS string, route *routev3.Route) *routev3.RouteAction {
	ra := &routev3.RouteAction{}
	type wc struct {
		name, host, subset string
		port, weight       uint32
		headers            *api.Headers
	}
	var cs []wc
	for _, d := range dests {
		if len(dests) > 1 && d.Weight == 0 {
			continue
		}
		host, port := g.resolve(d.Destination, p, vsNS)
		cs = append(cs, wc{g.destinationCluster(d.Destination, p, vsNS), host, d.Destination.Subset, port, uint32(max(d.Weight, 0)), d.Headers})
	}
	switch len(cs) {
	case 0:
		return nil
	case 1:
		ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: cs[0].name}
		// A destination's headers join the rule's, as Istio's
		// processDestination.
		if h := cs[0].headers; h != nil && route != nil && !g.grpc {
			reqAdd, reqRm := headerOps(h.Request)
			respAdd, respRm := headerOps(h.Response)
			route.RequestHeadersToAdd = append(route.RequestHeadersToAdd, reqAdd...)
			route.RequestHeadersToRemove = append(route.RequestHeadersToRemove, reqRm...)
			route.ResponseHeadersToAdd = append(route.ResponseHeadersToAdd, respAdd...)
			route.ResponseHeadersToRemove = append(route.ResponseHeadersToRemove, respRm...)
		}
	default:
		w := &routev3.WeightedCluster{}
		for _, c := range cs {
			cw := &routev3.WeightedCluster_ClusterWeight{Name: c.name, Weight: wrapperspb.UInt32(c.weight)}
			if h := c.headers; h != nil && !g.grpc {
				// On the weighted cluster, as Istio's
				// processWeightedDestination.
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = headerOps(h.Request)
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = headerOps(h.Response)
			}
			w.Clusters = append(w.Clusters, cw)
		}
		ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: w}
	}
	if g.grpc && slices.ContainsFunc(cs, func(c wc) bool { return c.headers != nil }) {
		g.report("service %s: route destination headers do not apply to proxyless gRPC clients; ignored", s.Host)
	}
	if r.Timeout != "" {
		if d, err := time.ParseDuration(r.Timeout); err == nil {
			ra.Timeout = durationpb.New(d)
			if g.grpc {
				ra.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(d)}
			}
		}
	} else {
		ra.Timeout = durationpb.New(0) // Istio's default: no route timeout
	}
	// Consistent hashing needs the route's hash policy: each
	// destination's, as Istio's processDestination and
	// processWeightedDestination add them.
	for _, c := range cs {
		if dr := g.m.destinationRule(c.host, g.ns); dr != nil {
			if lb := lbFor(dr, c.subset, c.port); lb != nil && lb.ConsistentHash != nil {
				ra.HashPolicy = append(ra.HashPolicy, hashPolicy(lb.ConsistentHash)...)
			}
		}
	}
	// As Istio, only a lone destination's hash keeps retries on the
	// host it hashes to.
	ra.RetryPolicy = retryPolicy(r.Retries, g.grpc, len(cs) == 1 && len(ra.HashPolicy) > 0)
	mirrors := r.Mirrors
	if r.Mirror != nil {
		pct := &api.Percent{Value: 100}
		if r.MirrorPercentage != nil {
			pct = r.MirrorPercentage
		} else if r.MirrorPercent != nil {
			pct = &api.Percent{Value: float64(*r.MirrorPercent)}
		}
		mirrors = append([]api.HTTPMirrorPolicy{{Destination: *r.Mirror, Percentage: pct}}, mirrors...)
	}
	if !g.grpc {
		for _, mp := range mirrors {
			// As Istio: mirrored requests are not traced, and keep
			// their Host (no -shadow suffix, Istio's
			// DISABLE_SHADOW_HOST_SUFFIX default).
			pol := &routev3.RouteAction_RequestMirrorPolicy{Cluster: g.destinationCluster(mp.Destination, p, vsNS),
				TraceSampled: wrapperspb.Bool(false), DisableShadowHostSuffixAppend: true}
			if mp.Percentage != nil {
				pol.RuntimeFraction = &corev3.RuntimeFractionalPercent{DefaultValue: fraction(mp.Percentage.Value)}
			}
			ra.RequestMirrorPolicies = append(ra.RequestMirrorPolicies, pol)
		}
		if rw := r.Rewrite; rw != nil {
			// As Istio: the regex rewrite, else the prefix (uri).
			if rr := rw.URIRegexRewrite; rr != nil && rr.Match != "" {
				ra.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: rr.Match}, Substitution: rr.Rewrite}
			} else if rw.URI != "" {
				ra.PrefixRewrite = rw.URI
			}
			if rw.Authority != "" {
				ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.Authority}
			}
		}
	} else if len(mirrors) > 0 || r.Rewrite != nil {
		g.report("service %s: mirror and rewrite do not apply to proxyless gRPC clients; ignored", s.Host)
	}
	return ra
}

// resolve is d's host (an FQDN) and port, reached on listener port p.
func (g *gen) resolve(d api.Destination, p ServicePort, vsNS string) (string, uint32) {
	host := d.Host
	if vsNS != "" {
		host = g.m.fqdn(d.Host, vsNS)
	}
	port := p.Number
	s := g.m.byHost[host]
	switch {
	case d.Port != nil && d.Port.Number != 0:
		port = d.Port.Number
	case s != nil && len(s.Ports) == 1:
		port = s.Ports[0].Number
	}
	return host, port
}

// destinationCluster names the cluster for d, reached on listener port p.
func (g *gen) destinationCluster(d api.Destination, p ServicePort, vsNS string) string {
	host, port := g.resolve(d, p, vsNS)
	s := g.m.byHost[host]
	if s == nil {
		g.report("route destination %s is not in the service registry; calls to it fail with 503", host)
	} else if d.Subset != "" {
		if dr := g.m.destinationRule(host, g.ns); dr == nil || subset(dr, d.Subset) == nil {
			g.report("route destination %s subset %s is not defined by a DestinationRule; calls to it fail with 503", host, d.Subset)
		}
	}
	return ClusterName(port, d.Subset, host)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
