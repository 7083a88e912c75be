package xds

import (
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	matchv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/matcher/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ppv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/proxy_protocol/v3"
	rawv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
)

// A DestinationRule's traffic policy on one cluster, as Istio's cluster
// builder applies it (pilot/pkg/networking/core/cluster_traffic_policy.go).
// Every field is either set on the cluster as Istio sets it or reported by
// name; none is dropped in silence.

// policy is the traffic policy of one cluster: the rule's, for a subset
// and port.
type policy struct {
	lb            *api.LoadBalancerSettings
	pool          *api.ConnectionPoolSettings
	od            *api.OutlierDetection
	tls           *api.ClientTLSSettings
	tunnel        *api.TunnelSettings
	proxyProtocol *api.ProxyProtocol
	retryBudget   *api.RetryBudget
}

// portPolicy is tp on port: its portLevelSettings entry for the port when
// there is one, which replaces loadBalancer, connectionPool,
// outlierDetection and tls wholesale (a field it omits takes its default,
// not tp's) and keeps no tunnel, proxyProtocol or retryBudget, as Istio's
// GetPortLevelTrafficPolicy; else tp itself. whole is true for a port
// entry.
func portPolicy(tp *api.TrafficPolicy, port uint32) (p policy, whole bool) {
	if tp == nil {
		return p, false
	}
	for _, pl := range tp.PortLevelSettings {
		if pl.Port != nil && pl.Port.Number == port {
			return policy{lb: pl.LoadBalancer, pool: pl.ConnectionPool, od: pl.OutlierDetection, tls: pl.TLS}, true
		}
	}
	return policy{lb: tp.LoadBalancer, pool: tp.ConnectionPool, od: tp.OutlierDetection, tls: tp.TLS,
		tunnel: tp.Tunnel, proxyProtocol: tp.ProxyProtocol, retryBudget: tp.RetryBudget}, false
}

// policyFor is the rule's traffic policy for a subset and port, merged as
// Istio's MergeSubsetTrafficPolicy: the rule's (port level) policy, then
// each field the subset's sets; a subset's port-level entry replaces the
// four fields it holds, set or not.
func policyFor(dr *api.DestinationRule, subsetName string, port uint32) policy {
	if dr == nil {
		return policy{}
	}
	p, _ := portPolicy(dr.Spec.TrafficPolicy, port)
	if subsetName == "" {
		return p
	}
	s := subset(dr, subsetName)
	if s == nil || s.TrafficPolicy == nil {
		return p
	}
	sp, whole := portPolicy(s.TrafficPolicy, port)
	if sp.lb != nil || whole {
		p.lb = sp.lb
	}
	if sp.pool != nil || whole {
		p.pool = sp.pool
	}
	if sp.od != nil || whole {
		p.od = sp.od
	}
	if sp.tls != nil || whole {
		p.tls = sp.tls
	}
	if sp.tunnel != nil {
		p.tunnel = sp.tunnel
	}
	if sp.proxyProtocol != nil {
		p.proxyProtocol = sp.proxyProtocol
	}
	if sp.retryBudget != nil {
		p.retryBudget = sp.retryBudget
	}
	return p
}

func lbFor(dr *api.DestinationRule, subsetName string, port uint32) *api.LoadBalancerSettings {
	return policyFor(dr, subsetName, port).lb
}

// applyLB sets c's load balancer, as Istio's applyLoadBalancer.
func (g *gen) applyLB(c *clusterv3.Cluster, lb *api.LoadBalancerSettings, id string) {
	switch lb.Simple {
	case "LEAST_CONN", "LEAST_REQUEST":
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	case "RANDOM":
		c.LbPolicy = clusterv3.Cluster_RANDOM
	case "PASSTHROUGH":
		g.report("DestinationRule %s: loadBalancer PASSTHROUGH is not supported; ROUND_ROBIN is used", id)
	}
	if ch := lb.ConsistentHash; ch != nil {
		switch {
		case ch.Maglev != nil:
			c.LbPolicy = clusterv3.Cluster_MAGLEV
			c.LbConfig = nil
			if ch.Maglev.TableSize != 0 {
				c.LbConfig = &clusterv3.Cluster_MaglevLbConfig_{MaglevLbConfig: &clusterv3.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(ch.Maglev.TableSize)}}
			}
		case ch.RingHash != nil:
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = nil
			if ch.RingHash.MinimumRingSize != 0 {
				c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(ch.RingHash.MinimumRingSize)}}
			}
		default:
			// The deprecated minimumRingSize, Envoy's default 1024 when
			// unset, as Istio's ApplyRingHashLoadBalancer.
			size := ch.MinimumRingSize
			if size == 0 {
				size = 1024
			}
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{MinimumRingSize: wrapperspb.UInt64(size)}}
		}
		if ck := ch.HTTPCookie; ck != nil && ck.Name == "" {
			g.report("DestinationRule %s: loadBalancer.consistentHash.httpCookie.name is required (Istio refuses the rule); no hash policy is set", id)
		}
	}
	g.applyWarmup(c, lb, id)
	if lb.LocalityLbSetting != nil {
		g.report("DestinationRule %s: loadBalancer.localityLbSetting is not supported (endpoints carry no locality); ignored", id)
	}
	if lb.ZoneAwareLbSetting != nil {
		g.report("DestinationRule %s: loadBalancer.zoneAwareLbSetting is not supported (endpoints carry no locality); ignored", id)
	}
}

// applyWarmup sets the slow start of a round robin or least request
// cluster, as Istio's setWarmup (warmup) and setSlowStartConfig (the
// deprecated warmupDurationSecs).
func (g *gen) applyWarmup(c *clusterv3.Cluster, lb *api.LoadBalancerSettings, id string) {
	if lb.Warmup == nil && lb.WarmupDurationSecs == "" {
		return
	}
	var sc *clusterv3.Cluster_SlowStartConfig
	if w := lb.Warmup; w != nil {
		if w.Duration == "" {
			g.report("DestinationRule %s: loadBalancer.warmup.duration is required; warmup is ignored", id)
			return
		}
		aggression, minPct := 1.0, 10.0 // Istio's defaults: linear, Envoy's 10%
		if w.Aggression != nil {
			aggression = *w.Aggression
		}
		if w.MinimumPercent != nil {
			minPct = *w.MinimumPercent
		}
		// Istio's runtime key "(" is one no runtime can set.
		sc = &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: dur(w.Duration),
			Aggression: &corev3.RuntimeDouble{DefaultValue: aggression, RuntimeKey: "("}, MinWeightPercent: &typev3.Percent{Value: minPct}}
	} else {
		sc = &clusterv3.Cluster_SlowStartConfig{SlowStartWindow: dur(lb.WarmupDurationSecs)}
	}
	switch {
	case lb.ConsistentHash == nil && c.LbPolicy == clusterv3.Cluster_ROUND_ROBIN:
		c.LbConfig = &clusterv3.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &clusterv3.Cluster_RoundRobinLbConfig{SlowStartConfig: sc}}
	case lb.ConsistentHash == nil && c.LbPolicy == clusterv3.Cluster_LEAST_REQUEST:
		c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{SlowStartConfig: sc}}
	default:
		g.report("DestinationRule %s: loadBalancer.warmup applies to ROUND_ROBIN and LEAST_REQUEST only (as in Istio); ignored for %s", id, c.LbPolicy)
	}
}

// applyPool sets the connection pool's limits and the retry budget, as
// Istio's applyConnectionPool: circuit breaker thresholds, connect
// timeout, TCP keepalive. The HTTP protocol options are httpOptions'.
func applyPool(c *clusterv3.Cluster, pool *api.ConnectionPoolSettings, rb *api.RetryBudget) {
	if pool == nil && rb == nil {
		return
	}
	th := &clusterv3.CircuitBreakers_Thresholds{}
	if pool != nil {
		if t := pool.TCP; t != nil {
			th.MaxConnections = u32(t.MaxConnections)
			if d := dur(t.ConnectTimeout); d != nil {
				c.ConnectTimeout = d
			}
			if k := t.TCPKeepalive; k != nil {
				// SO_KEEPALIVE with the OS's defaults, each set value
				// overriding one, in whole seconds (Envoy's unit).
				ka := &corev3.TcpKeepalive{}
				if k.Probes > 0 {
					ka.KeepaliveProbes = wrapperspb.UInt32(k.Probes)
				}
				if d := dur(k.Time); d != nil {
					ka.KeepaliveTime = wrapperspb.UInt32(uint32(d.Seconds))
				}
				if d := dur(k.Interval); d != nil {
					ka.KeepaliveInterval = wrapperspb.UInt32(uint32(d.Seconds))
				}
				c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{TcpKeepalive: ka}
			}
		}
		if h := pool.HTTP; h != nil {
			th.MaxPendingRequests = u32(h.HTTP1MaxPendingRequests)
			th.MaxRequests = u32(h.HTTP2MaxRequests)
			th.MaxRetries = u32(h.MaxRetries)
		}
	}
	if rb != nil {
		// Istio's applyRetryBudget: 20% and 3 unless set.
		pct, minC := 20.0, uint32(3)
		if rb.Percent != nil {
			pct = *rb.Percent
		}
		if rb.MinRetryConcurrency > 0 {
			minC = rb.MinRetryConcurrency
		}
		th.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: pct},
			MinRetryConcurrency: wrapperspb.UInt32(minC), BudgetInterval: dur(rb.BudgetInterval)}
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
}

// applyOutlier sets outlier detection, as Istio's applyOutlierDetection:
// success-rate ejection off, each consecutive-error kind enforced when
// its count is above 0, local-origin errors split on request, and the
// panic threshold at minHealthPercent (0, panic mode off, by default).
func (g *gen) applyOutlier(c *clusterv3.Cluster, od *api.OutlierDetection, id string) {
	o := &clusterv3.OutlierDetection{Interval: dur(od.Interval), BaseEjectionTime: dur(od.BaseEjectionTime), MaxEjectionPercent: u32(od.MaxEjectionPercent),
		EnforcingSuccessRate: wrapperspb.UInt32(0)}
	enforce := func(n uint32) *wrapperspb.UInt32Value {
		if n > 0 {
			return wrapperspb.UInt32(100)
		}
		return wrapperspb.UInt32(0)
	}
	switch {
	case od.Consecutive5xxErrors != nil:
		o.Consecutive_5Xx = wrapperspb.UInt32(*od.Consecutive5xxErrors)
		o.EnforcingConsecutive_5Xx = enforce(*od.Consecutive5xxErrors)
	case od.ConsecutiveErrors > 0:
		// The deprecated consecutiveErrors, read as consecutive5xxErrors.
		o.Consecutive_5Xx = wrapperspb.UInt32(uint32(od.ConsecutiveErrors))
		o.EnforcingConsecutive_5Xx = enforce(uint32(od.ConsecutiveErrors))
	}
	if n := od.ConsecutiveGatewayErrors; n != nil {
		o.ConsecutiveGatewayFailure = wrapperspb.UInt32(*n)
		o.EnforcingConsecutiveGatewayFailure = enforce(*n)
	}
	if od.SplitExternalLocalOriginErrors {
		o.SplitExternalLocalOriginErrors = true
		if n := od.ConsecutiveLocalOriginFailures; n != nil && *n > 0 {
			o.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(*n)
			o.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(100)
		}
		o.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
	} else if od.ConsecutiveLocalOriginFailures != nil {
		g.report("DestinationRule %s: outlierDetection.consecutiveLocalOriginFailures applies only with splitExternalLocalOriginErrors (as in Istio); ignored", id)
	}
	if g.grpc {
		// grpc-go implements success-rate and failure-percentage
		// ejection, not consecutive errors: map onto failure
		// percentage so ejection still happens.
		o.FailurePercentageThreshold = wrapperspb.UInt32(50)
		o.EnforcingFailurePercentage = wrapperspb.UInt32(100)
	}
	c.OutlierDetection = o
	if od.MinHealthPercent >= 0 {
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: float64(od.MinHealthPercent)}}
	}
}

// httpOptions are the HTTP protocol options of an Envoy cluster of s on
// port p, in the order Istio's cluster builder sets them
// (applyH2Upgrade, applyConnectionPool, setUpstreamProtocol): HTTP/2 with
// h2UpgradePolicy UPGRADE (unless useClientProtocol) or for a declared
// HTTP/2 or gRPC port; the connection pool's timeouts and limits (the
// HTTP/2 ones on an HTTP/2 cluster); the client's protocol with
// useClientProtocol, and for an HTTP port whose protocol is not declared
// (Istio sniffs it; warden takes the name's prefix), whatever came before;
// outlier detection's error codes; HTTP/1.1 when only options need a
// protocol. nil: none to set.
func (g *gen) httpOptions(s *Service, p ServicePort, pol policy, id string) *httpv3.HttpProtocolOptions {
	opts := &httpv3.HttpProtocolOptions{}
	var hs *api.HTTPSettings
	var ts *api.TCPSettings
	if pol.pool != nil {
		hs, ts = pol.pool.HTTP, pol.pool.TCP
	}
	declared := strings.ToUpper(p.Protocol)
	if declared == "" && s.Entry == "" {
		// A Kubernetes port's protocol is its name's prefix (Istio's
		// convention); a ServiceEntry's only its protocol field.
		declared, _, _ = strings.Cut(strings.ToUpper(p.Name), "-")
	}
	sniffed := p.isHTTP() && declared == ""
	h2 := &corev3.Http2ProtocolOptions{}
	setH2 := func() {
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2}}}
	}
	downstream := func() {
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}
	}
	if declared == "HTTP2" || declared == "GRPC" {
		setH2()
	}
	if hs != nil && hs.H2UpgradePolicy == "UPGRADE" {
		switch {
		case hs.UseClientProtocol:
			g.report("DestinationRule %s: connectionPool.http.h2UpgradePolicy UPGRADE is overridden by useClientProtocol (as in Istio)", id)
		case sniffed:
			g.report("DestinationRule %s: connectionPool.http.h2UpgradePolicy UPGRADE does not apply to port %d, whose protocol is not declared: the client's protocol is used (as in Istio, which sniffs it)", id, p.Number)
		default:
			setH2()
		}
	}
	isH2 := opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil && !sniffed
	common := &corev3.HttpProtocolOptions{}
	if hs != nil {
		common.IdleTimeout = dur(hs.IdleTimeout)
		common.MaxRequestsPerConnection = u32(hs.MaxRequestsPerConnection)
		if hs.MaxConcurrentStreams > 0 || hs.HTTP2KeepAlive != nil {
			if !isH2 {
				g.report("DestinationRule %s: connectionPool.http.maxConcurrentStreams and http2KeepAlive apply to HTTP/2 upstreams only (as in Istio); ignored on port %d", id, p.Number)
			} else {
				h2.MaxConcurrentStreams = u32(hs.MaxConcurrentStreams)
				if k := hs.HTTP2KeepAlive; k != nil {
					h2.ConnectionKeepalive = &corev3.KeepaliveSettings{Interval: dur(k.Interval), Timeout: dur(k.Timeout)}
				}
			}
		}
		if hs.UseClientProtocol {
			downstream()
		}
	}
	if sniffed {
		downstream()
	}
	if ts != nil {
		common.MaxConnectionDuration = dur(ts.MaxConnectionDuration)
		if common.IdleTimeout == nil {
			common.IdleTimeout = dur(ts.IdleTimeout)
		}
	}
	if common.IdleTimeout != nil || common.MaxRequestsPerConnection != nil || common.MaxConnectionDuration != nil {
		opts.CommonHttpProtocolOptions = common
	}
	if od := pol.od; od != nil && len(od.OutlierDetectionHTTPErrorCodes) > 0 {
		opts.OutlierDetection = &httpv3.HttpProtocolOptions_OutlierDetection{ErrorMatcher: statusMatcher(od.OutlierDetectionHTTPErrorCodes)}
	}
	if opts.UpstreamProtocolOptions == nil {
		if opts.CommonHttpProtocolOptions == nil && opts.OutlierDetection == nil {
			return nil
		}
		// Envoy requires a protocol: HTTP/1.1, as Istio's build().
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}}}}
	}
	return opts
}

// statusMatcher matches responses whose :status is one of codes, as
// Istio's applyOutlierDetectionErrorCodes.
func statusMatcher(codes []uint32) *matchv3.MatchPredicate {
	rules := make([]*matchv3.MatchPredicate, 0, len(codes))
	for _, code := range codes {
		rules = append(rules, &matchv3.MatchPredicate{Rule: &matchv3.MatchPredicate_HttpResponseHeadersMatch{HttpResponseHeadersMatch: &matchv3.HttpHeadersMatch{
			Headers: []*routev3.HeaderMatcher{{Name: ":status", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: strconv.Itoa(int(code))}}}}}}}})
	}
	if len(rules) == 1 {
		return rules[0]
	}
	return &matchv3.MatchPredicate{Rule: &matchv3.MatchPredicate_OrMatch{OrMatch: &matchv3.MatchPredicate_MatchSet{Rules: rules}}}
}

// applyProxyProtocol wraps c's transport socket (raw TCP when it has
// none) to send a PROXY protocol header first, as Istio's
// applyUpstreamProxyProtocol.
func applyProxyProtocol(c *clusterv3.Cluster, pp *api.ProxyProtocol) {
	version := corev3.ProxyProtocolConfig_V1
	if pp.Version == "V2" {
		version = corev3.ProxyProtocolConfig_V2
	}
	inner := c.TransportSocket
	if inner == nil {
		raw, _ := anypb.New(&rawv3.RawBuffer{})
		inner = &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: raw}}
	}
	a, _ := anypb.New(&ppv3.ProxyProtocolUpstreamTransport{Config: &corev3.ProxyProtocolConfig{Version: version}, TransportSocket: inner})
	c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.upstream_proxy_protocol", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}

// reportTunnel: a DestinationRule's tunnel (Istio's CONNECT/POST
// tunnelling of TCP through an egress gateway's listener) is not built.
func (g *gen) reportTunnel(id string, t *api.TunnelSettings) {
	g.report("DestinationRule %s: trafficPolicy.tunnel (%s to %s:%d) is not supported; connections are not tunnelled", id, nonEmpty(t.Protocol, "CONNECT"), t.TargetHost, t.TargetPort)
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// reportUnapplied names the rules for s that a proxy of this scope does
// not apply: a DestinationRule with a workloadSelector (warden applies
// none), and at a sidecar a VirtualService's tcp and tls routes (only a
// gateway's are built).
func (g *gen) reportUnapplied(s *Service, router bool) {
	for _, r := range g.m.dr[s.Host] {
		if r.Spec.WorkloadSelector != nil && exported(r.Spec.ExportTo, r.Metadata.Namespace, g.ns) {
			g.report("DestinationRule %s: workloadSelector is not supported; the rule applies to no proxy", objKey(r))
		}
	}
	if router || g.grpc {
		return
	}
	if v := g.m.virtualService(s.Host, g.ns, g.egress); v != nil && (len(v.Spec.TCP) > 0 || len(v.Spec.TLS) > 0) {
		g.report("VirtualService %s: tcp and tls routes are not supported at a sidecar (only at a gateway); connections to %s go to the service itself", objKey(v), s.Host)
	}
}
