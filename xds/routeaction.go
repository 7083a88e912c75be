package xds

import (
	"net/http"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
)

// A VirtualService rule's actions and policies, as Istio's route
// translation builds them (pilot/pkg/networking/core/route/route.go,
// route/retry/retry.go): redirects, faults, CORS, retries, header changes.

// perFilter sets the route's configuration of the HTTP filter named name
// (typed_per_filter_config), as Istio's translateRoute does for the fault
// and CORS filters.
func perFilter(route *routev3.Route, name string, cfg proto.Message) {
	if route.TypedPerFilterConfig == nil {
		route.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	route.TypedPerFilterConfig[name] = typed(cfg)
}

// reportRule names the fields of rule r that its other fields leave
// without effect (in Istio too).
func (g *gen) reportRule(r *api.HTTPRoute, at string) {
	if r.Mirror == nil && (r.MirrorPercent != nil || r.MirrorPercentage != nil) {
		g.report("%s: mirrorPercentage and mirrorPercent apply with mirror; ignored", at)
	}
	if rt := r.Retries; rt != nil && rt.Attempts <= 0 && (rt.PerTryTimeout != "" || rt.RetryOn != "" || rt.RetryRemoteLocalities != nil || rt.RetryIgnorePreviousHosts != nil || rt.Backoff != "") {
		g.report("%s.retries: attempts 0 turns retries off (as in Istio); perTryTimeout, retryOn, retryRemoteLocalities, retryIgnorePreviousHosts and backoff are ignored", at)
	}
	if rt := r.Retries; rt != nil && rt.Attempts > 0 && rt.RetryRemoteLocalities != nil && *rt.RetryRemoteLocalities {
		g.report("%s.retries.retryRemoteLocalities is not supported (endpoints carry no locality); ignored", at)
	}
	if rw := r.Rewrite; rw != nil && rw.URIRegexRewrite != nil && rw.URIRegexRewrite.Match == "" {
		g.report("%s.rewrite.uriRegexRewrite.match is required (Istio refuses the rule without it); the regex rewrite is ignored", at)
	}
	if (r.Redirect != nil || r.DirectResponse != nil) && (len(r.Route) > 0 || r.Rewrite != nil || r.Mirror != nil || len(r.Mirrors) > 0 || r.Retries != nil || r.Timeout != "") {
		g.report("%s: route, rewrite, mirror, retries and timeout do not apply to a redirect or directResponse (as in Istio); ignored", at)
	}
}

// redirect is Istio's ApplyRedirect: the path replaced (uri) or its
// prefix (prefixRewrite); the port given, or with derivePort
// FROM_REQUEST_PORT the listener's (Envoy cannot read the request's; the
// route is built per port), without the scheme's default port; 301
// unless another code is given.
func redirect(r *api.HTTPRedirect, port uint32, tls bool) *routev3.RedirectAction {
	ra := &routev3.RedirectAction{HostRedirect: r.Authority}
	if r.PrefixRewrite != "" {
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: r.PrefixRewrite}
	} else if r.URI != "" {
		ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: r.URI}
	}
	if r.Scheme != "" {
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: r.Scheme}
	}
	if r.Port != 0 || r.DerivePort != "" {
		ra.PortRedirect = r.Port
		if r.DerivePort == "FROM_REQUEST_PORT" {
			ra.PortRedirect = port
		}
		scheme := r.Scheme
		if scheme == "" {
			scheme = "http"
			if tls {
				scheme = "https"
			}
		}
		if ra.PortRedirect == 80 && scheme == "http" || ra.PortRedirect == 443 && scheme == "https" {
			ra.PortRedirect = 0
		}
	}
	switch r.RedirectCode {
	case 302:
		ra.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		ra.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		ra.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		ra.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	}
	return ra
}

func fraction(pct float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(pct * 10000), Denominator: typev3.FractionalPercent_MILLION}
}

func faultPercent(p *api.Percent, legacy int32) *typev3.FractionalPercent {
	switch {
	case p != nil:
		return fraction(p.Value)
	case legacy != 0:
		return fraction(float64(legacy))
	}
	return fraction(100)
}

// fault is Istio's TranslateFault: a fixed delay (exponential delays are
// not built, in Istio either), an HTTP or gRPC status abort; what is not
// built is reported at at.
func (g *gen) fault(f *api.HTTPFaultInjection, at string) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := f.Delay; d != nil {
		switch {
		case d.FixedDelay != "":
			out.Delay = &faultcommon.FaultDelay{FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: dur(d.FixedDelay)}, Percentage: faultPercent(d.Percentage, d.Percent)}
			if d.ExponentialDelay != "" {
				g.report("%s.delay.exponentialDelay is not supported (nor in Istio); the fixedDelay is used", at)
			}
		case d.ExponentialDelay != "":
			g.report("%s.delay.exponentialDelay is not supported (nor in Istio); no delay is injected", at)
		default:
			g.report("%s.delay has no fixedDelay; no delay is injected", at)
		}
	}
	if a := f.Abort; a != nil {
		ab := &faultv3.FaultAbort{Percentage: faultPercent(a.Percentage, 0)}
		switch {
		case a.HTTPStatus != 0:
			ab.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)}
		case a.GRPCStatus != "":
			ab.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: grpcCode(a.GRPCStatus)}
		case a.HTTP2Error != "":
			g.report("%s.abort.http2Error is not supported (nor in Istio); no abort is injected", at)
			ab = nil
		default:
			g.report("%s.abort has no httpStatus or grpcStatus; no abort is injected", at)
			ab = nil
		}
		out.Abort = ab
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// corsPolicy is Istio's TranslateCORSPolicy: the origins allowed are
// allowOrigins' string matches (an empty match is dropped), else the
// deprecated allowOrigin list matched exactly; methods and headers joined
// with ","; maxAge in whole seconds; allowCredentials as given; the
// policy enforced on every request (filter_enabled 100%); a preflight that
// matches no origin forwarded to the application unless
// unmatchedPreflights is IGNORE (FORWARD, or unset: Envoy's behaviour
// before 1.30, which Istio keeps).
func corsPolicy(in *api.CorsPolicy) *corsv3.CorsPolicy {
	out := &corsv3.CorsPolicy{
		ForwardNotMatchingPreflights: wrapperspb.Bool(in.UnmatchedPreflights != "IGNORE"),
		FilterEnabled:                &corev3.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}},
		AllowMethods:                 strings.Join(in.AllowMethods, ","),
		AllowHeaders:                 strings.Join(in.AllowHeaders, ","),
		ExposeHeaders:                strings.Join(in.ExposeHeaders, ","),
	}
	if len(in.AllowOrigins) > 0 {
		for _, m := range in.AllowOrigins {
			if sm := stringMatcher(m); sm != nil {
				out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
			}
		}
	} else {
		for _, o := range in.AllowOrigin {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
		}
	}
	if in.AllowCredentials != nil {
		out.AllowCredentials = wrapperspb.Bool(*in.AllowCredentials)
	}
	if d := dur(in.MaxAge); d != nil {
		out.MaxAge = strconv.FormatInt(d.GetSeconds(), 10)
	}
	return out
}

var grpcCodes = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
	"RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func grpcCode(s string) uint32 {
	for i, c := range grpcCodes {
		if strings.EqualFold(c, s) {
			return uint32(i)
		}
	}
	return 2 // UNKNOWN
}

// Istio's default retry policy when a route names none.
const defaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

// retryPolicy is Istio's retry.ConvertPolicy: by default 2 attempts on
// defaultRetryOn, skipping the hosts already tried (5 host selection
// attempts) unless the route hashes consistently to one host (hash); a
// rule's retries override each field they set; attempts 0 turns retries
// off.
func retryPolicy(r *api.HTTPRetry, grpc, hash bool) *routev3.RetryPolicy {
	attempts, on := int32(2), defaultRetryOn
	if r != nil {
		if r.Attempts <= 0 {
			return nil
		}
		attempts = r.Attempts
		if r.RetryOn != "" {
			on = r.RetryOn
		}
	}
	if grpc {
		// grpc-go understands only gRPC status names, and no host
		// predicates.
		var keep []string
		for _, c := range strings.Split(on, ",") {
			switch c {
			case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
				keep = append(keep, c)
			}
		}
		if len(keep) == 0 {
			return nil
		}
		return &routev3.RetryPolicy{RetryOn: strings.Join(keep, ","), NumRetries: wrapperspb.UInt32(uint32(attempts))}
	}
	rp := &routev3.RetryPolicy{RetryOn: on, NumRetries: wrapperspb.UInt32(uint32(attempts)), HostSelectionRetryMaxAttempts: 5}
	skipPrevious := !hash
	if r != nil {
		if r.RetryOn != "" {
			rp.RetryOn, rp.RetriableStatusCodes = parseRetryOn(r.RetryOn)
			if len(rp.RetriableStatusCodes) > 0 && !strings.Contains(rp.RetryOn, "retriable-status-codes") {
				rp.RetryOn += ",retriable-status-codes"
			}
		}
		rp.PerTryTimeout = dur(r.PerTryTimeout)
		if r.RetryIgnorePreviousHosts != nil {
			skipPrevious = *r.RetryIgnorePreviousHosts
		}
		if r.Backoff != "" {
			rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: dur(r.Backoff)}
		}
	}
	if skipPrevious {
		cfg, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
		rp.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: cfg}}}
	}
	return rp
}

// parseRetryOn splits retryOn into Envoy's retry conditions and the HTTP
// status codes among them, as Istio's parseRetryOn.
func parseRetryOn(on string) (string, []uint32) {
	var conds []string
	var codes []uint32
	for _, part := range strings.Split(on, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if n, err := strconv.Atoi(part); err == nil && http.StatusText(n) != "" {
			codes = append(codes, uint32(n))
			continue
		}
		conds = append(conds, part)
	}
	return strings.Join(conds, ","), codes
}

func headerOps(h *api.HeaderOperations) ([]*corev3.HeaderValueOption, []string) {
	if h == nil {
		return nil, nil
	}
	var add []*corev3.HeaderValueOption
	for _, k := range sortedKeys(h.Set) {
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: h.Set[k]}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, k := range sortedKeys(h.Add) {
		add = append(add, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: h.Add[k]}, AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return add, h.Remove
}
