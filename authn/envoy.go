package authn

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
)

// Envoy names warden uses.
const (
	// JWTPayloadKey is where jwt_authn writes the verified token's payload
	// in its dynamic metadata; rbac matches requestPrincipals and
	// request.auth.* conditions against it.
	JWTPayloadKey = "payload"

	TLSInspector   = "envoy.filters.listener.tls_inspector"
	TLSSocket      = "envoy.transport_sockets.tls"
	JWTAuthnFilter = "envoy.filters.http.jwt_authn"
)

// Output is the Envoy configuration for a workload's authentication.
type Output struct {
	Settings        *Settings
	ListenerFilters []*listenerv3.ListenerFilter // tls_inspector when a port is PERMISSIVE
	FilterChains    []*listenerv3.FilterChain    // inbound, per port; network filters are added by xds
	JWT             *jwtv3.JwtAuthentication     // nil without JWT rules
}

// Compile computes w's settings and their Envoy configuration. Every
// message passes ValidateAll.
func (ix *Index) Compile(w Workload) (*Output, error) {
	s, err := ix.Effective(w)
	if err != nil {
		return nil, err
	}
	out := &Output{Settings: s}
	inspector := false
	for _, p := range s.Ports {
		switch p.Mode {
		case Strict:
			out.FilterChains = append(out.FilterChains, ix.tlsChain(w.port(p.Port), "tls"))
		case Permissive:
			inspector = true
			out.FilterChains = append(out.FilterChains, ix.tlsChain(w.port(p.Port), "tls"), plainChain(p.Port, "raw_buffer"))
		case Disable:
			out.FilterChains = append(out.FilterChains, plainChain(p.Port, ""))
		}
	}
	if inspector {
		cfg, _ := anypb.New(&tlsinspector.TlsInspector{})
		out.ListenerFilters = []*listenerv3.ListenerFilter{{Name: TLSInspector, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: cfg}}}
	}
	if len(s.JWT) > 0 {
		if out.JWT, err = ix.jwtConfig(s.JWT, s); err != nil {
			return nil, err
		}
	}
	if err := out.validate(); err != nil {
		return nil, err
	}
	return out, nil
}

func (o *Output) validate() error {
	for _, f := range o.ListenerFilters {
		if err := f.ValidateAll(); err != nil {
			return fmt.Errorf("authn: listener filter: %w", err)
		}
	}
	for _, c := range o.FilterChains {
		if err := c.ValidateAll(); err != nil {
			return fmt.Errorf("authn: filter chain %s: %w", c.Name, err)
		}
		if ts := c.GetTransportSocket(); ts != nil {
			var d tlsv3.DownstreamTlsContext
			if err := ts.GetTypedConfig().UnmarshalTo(&d); err != nil {
				return err
			}
			if err := d.ValidateAll(); err != nil {
				return fmt.Errorf("authn: filter chain %s: %w", c.Name, err)
			}
		}
	}
	if o.JWT != nil {
		if err := o.JWT.ValidateAll(); err != nil {
			return fmt.Errorf("authn: jwt_authn: %w", err)
		}
	}
	return nil
}

func (ix *Index) sdsConfig(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType: corev3.ApiConfigSource_GRPC, TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ix.opts.SDSCluster}}}},
		}},
	}}
}

// CommonTLS is the certificate and peer validation every mesh TLS context
// uses: SDS "default", and SDS "ROOTCA" combined with a SAN matcher that
// accepts any SPIFFE ID in the trust domain or one of its aliases (Istio
// checks no SAN here; see docs/policy-authn.md).
func (ix *Index) CommonTLS() *tlsv3.CommonTlsContext {
	var sans []*tlsv3.SubjectAltNameMatcher
	for _, td := range append([]string{ix.opts.TrustDomain.Name()}, ix.opts.TrustDomainAliases...) {
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/"}}})
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{ix.sdsConfig("default")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: ix.sdsConfig("ROOTCA"),
		}},
		AlpnProtocols: []string{"h2", "http/1.1"},
	}
}

// UpstreamTLS is the client side of ISTIO_MUTUAL: present "default",
// verify the server against ROOTCA and, when given, its SPIFFE ID.
func (ix *Index) UpstreamTLS(sni string, serverIDs ...string) (*tlsv3.UpstreamTlsContext, error) {
	common := ix.CommonTLS()
	if len(serverIDs) > 0 {
		var m []*tlsv3.SubjectAltNameMatcher
		for _, id := range serverIDs {
			m = append(m, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}})
		}
		common.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames = m
	}
	u := &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni}
	if err := u.ValidateAll(); err != nil {
		return nil, fmt.Errorf("authn: upstream TLS: %w", err)
	}
	return u, nil
}

func (ix *Index) tlsChain(port Port, transport string) *listenerv3.FilterChain {
	common := ix.CommonTLS()
	common.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2, TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3, CipherSuites: inboundCiphers}
	common.AlpnProtocols = alpnTCP
	if IsHTTP(port) {
		common.AlpnProtocols = alpnHTTP
	}
	ctx, _ := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: common, RequireClientCertificate: wrapperspb.Bool(true)})
	return &listenerv3.FilterChain{
		Name:             fmt.Sprintf("inbound|%d|mtls", port.Number),
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port.Number), TransportProtocol: transport},
		TransportSocket:  &corev3.TransportSocket{Name: TLSSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}},
	}
}

func plainChain(port uint32, transport string) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name:             fmt.Sprintf("inbound|%d|plaintext", port),
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), TransportProtocol: transport},
	}
}

// Istio's inbound TLS parameters: TLS 1.2 to 1.3 and its server cipher
// suites (pilot/pkg/security/authn/utils), and the ALPN it offers.
var (
	inboundCiphers = []string{
		"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
		"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
		"AES256-GCM-SHA384", "AES128-GCM-SHA256",
	}
	alpnHTTP = []string{"h2", "http/1.1"}
	alpnTCP  = []string{"istio-peer-exchange", "h2", "http/1.1"}
)

// spaceDelimited is Istio's list: scope and permission always, plus the
// rule's own, sorted.
func spaceDelimited(extra []string) []string {
	set := map[string]bool{"scope": true, "permission": true}
	for _, c := range extra {
		set[c] = true
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// noKeys is a key set no token verifies against: what an issuer whose
// keys are not known yet gets, so its tokens are refused (fail closed).
// It is a well-formed JWKS (Envoy refuses an empty one) holding an RSA
// public key whose private key was generated and thrown away at once.
const noKeys = `{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"warden-no-private-key","e":"AQAB","n":"wHWdHWTrWGqCRO-9FdUJKfxTOJX3QG1ipRMOYRXHV417zYD7Hour6-aKv-WCDjeAFPinR42lA5sbq9sA9lRkW3n6N37yLrAVkitAS3cukHq_26OVB-HMkH12tgQEioFCkTkRb68abUysQ7BhswPt4sSL8MFN2PzhtcpqQbZy2nDa46dHwl1T_pDm4wLKhWMuS14zfSYqTISv67g3oJQlZgaEf-wbkZycEXyOiVw3b5daBxqHGM1qSmvaahrN_3ZcGbt8bmrSLshyRj3mek5KsJCkV4wf8kRt7kTkVpQ-zpcsIThdlt33yCUWEX6tCnaLarWeURPWy28lM7udaiRHcw"}]}`

// jwtConfig builds jwt_authn as Istio does: a provider per issuer (the
// verified payload in dynamic metadata under JWTPayloadKey, space-delimited
// claims split into lists), CORS preflights let through, and a requirement
// that accepts a valid token from any provider or none at all
// (authorization decides) but refuses an invalid one. A legacy origin that
// is not optional requires a valid token.
func (ix *Index) jwtConfig(rules []JWTRule, s *Settings) (*jwtv3.JwtAuthentication, error) {
	byIssuer := map[string]JWTRule{}
	var order []string
	required := false
	for _, r := range rules {
		if _, ok := byIssuer[r.Issuer]; !ok {
			order = append(order, r.Issuer)
		}
		byIssuer[r.Issuer] = r // the later rule for an issuer wins
		required = required || r.Required
	}
	sort.Strings(order)
	cfg := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}, BypassCorsPreflight: true}
	var any, eachOrMissing []*jwtv3.JwtRequirement
	var excluded []PathMatch
	var included []PathMatch
	for i, iss := range order {
		r := byIssuer[iss]
		name := fmt.Sprintf("origins-%d", i)
		p := &jwtv3.JwtProvider{
			Issuer: r.Issuer, Audiences: r.Audiences, Forward: r.ForwardOriginalToken,
			FromParams: r.FromParams, FromCookies: r.FromCookies, PayloadInMetadata: JWTPayloadKey, ForwardPayloadHeader: r.OutputPayloadToHeader,
			NormalizePayloadInMetadata: &jwtv3.JwtProvider_NormalizePayload{SpaceDelimitedClaims: spaceDelimited(r.SpaceDelimitedClaims)},
		}
		for _, h := range r.FromHeaders {
			p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.Name, ValuePrefix: h.Prefix})
		}
		for _, c := range r.OutputClaimToHeaders {
			p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: c.Header, ClaimName: c.Claim})
		}
		timeout := r.Timeout
		if timeout == 0 {
			timeout = 5 * time.Second
		}
		switch {
		case r.Jwks != "":
			p.JwksSourceSpecifier = localJwks(r.Jwks)
		case r.JwksURI != "":
			cluster, problem := ix.jwksCluster(r.JwksURI)
			if problem != nil {
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("JWT issuer %s (%s): jwksUri %s: %v; until then Envoy cannot fetch its keys and refuses its tokens", r.Issuer, r.Source, r.JwksURI, problem))
			}
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri:       &corev3.HttpUri{Uri: r.JwksURI, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: cluster}, Timeout: durationpb.New(timeout)},
				CacheDuration: durationpb.New(5 * time.Minute),
			}}
		default:
			// Only an issuer: its keys come from OIDC discovery, which the
			// control plane does; until they are known no token of this
			// issuer verifies.
			jwks, err := "", errNoKeySource
			if ix.opts.Keys != nil {
				jwks, err = ix.opts.Keys.JWKS(r.Issuer)
			}
			if err != nil {
				jwks = noKeys
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("JWT issuer %s (%s): keys not known yet (%v); its tokens are refused until OIDC discovery finds them", r.Issuer, r.Source, err))
			}
			p.JwksSourceSpecifier = localJwks(jwks)
		}
		cfg.Providers[name] = p
		one := &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}}
		any = append(any, one)
		eachOrMissing = append(eachOrMissing, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{
			Requirements: []*jwtv3.JwtRequirement{one, {RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}}}}}})
		excluded = append(excluded, r.ExcludePaths...)
		included = append(included, r.IncludePaths...)
	}
	var req *jwtv3.JwtRequirement
	switch {
	case required && len(any) == 1:
		req = any[0]
	case required:
		req = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: any}}}
	case len(any) == 1:
		req = eachOrMissing[0] // {provider OR allow_missing}
	default:
		// Istio's form: a valid token of any provider, or each provider's
		// token valid or missing (which also covers providers sharing a
		// location).
		all := &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAll{RequiresAll: &jwtv3.JwtRequirementAndList{Requirements: eachOrMissing}}}
		req = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: append(any, all)}}}
	}
	// Legacy trigger rules: excluded paths need no token; when included
	// paths are listed, only they are checked.
	for _, m := range excluded {
		cfg.Rules = append(cfg.Rules, &jwtv3.RequirementRule{Match: routeMatch(m)})
	}
	if len(included) > 0 {
		for _, m := range included {
			cfg.Rules = append(cfg.Rules, &jwtv3.RequirementRule{Match: routeMatch(m), RequirementType: &jwtv3.RequirementRule_Requires{Requires: req}})
		}
		return cfg, nil
	}
	cfg.Rules = append(cfg.Rules, &jwtv3.RequirementRule{
		Match:           &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: req},
	})
	return cfg, nil
}

var errNoKeySource = errors.New("no OIDC discovery configured")

// JwksClusters is, for each jwksUri of the index's policies, the cluster
// its keys are fetched through and why that cluster will not exist (after
// a NUL; nothing when it will). It follows the registry (Options.Hosts):
// the control plane compares it across registry changes, which no policy
// edit marks, to know when jwt_authn must be compiled again.
func (ix *Index) JwksClusters() map[string]string {
	out := map[string]string{}
	add := func(uri string) {
		if uri == "" {
			return
		}
		c, problem := ix.jwksCluster(uri)
		if problem != nil {
			c += "\x00" + problem.Error()
		}
		out[uri] = c
	}
	for _, ras := range ix.ra {
		for _, ra := range ras {
			for _, r := range ra.Spec.JWTRules {
				add(r.JwksURI)
			}
		}
	}
	origins := func(spec api.PolicySpec) {
		for _, o := range spec.Origins {
			if o.JWT != nil {
				add(o.JWT.JwksURI)
			}
		}
	}
	if ix.mesh != nil {
		origins(ix.mesh.Spec)
	}
	for _, ps := range ix.legNS {
		for _, p := range ps {
			origins(p.Spec)
		}
	}
	return out
}

// jwksCluster is the outbound cluster Envoy fetches a jwksUri through, as
// Istio names it (pilot/pkg/security/authn policy_applier.go, JwtFilter):
// the port is the URI's, else 80 for http and 443 for https
// (pkg/config/security ParseJwksURI); the host is the registry service the
// URI's host names (Options.Hosts), or the host as written when none does
// or no registry is known (Istio's model.BuildSubsetKey fallback). problem
// says why that cluster will not exist.
func (ix *Index) jwksCluster(uri string) (cluster string, problem error) {
	u, _ := url.Parse(uri) // checked by NewIndex
	port := uint64(443)
	if u.Scheme == "http" {
		port = 80
	}
	if p := u.Port(); p != "" {
		var err error
		if port, err = strconv.ParseUint(p, 10, 16); err != nil {
			return fmt.Sprintf("outbound|%s||%s", p, u.Hostname()), fmt.Errorf("port %q is not a port number", p)
		}
	}
	host := u.Hostname()
	if ix.opts.Hosts != nil {
		host, problem = ix.opts.Hosts.ResolveHost(host, uint32(port))
	}
	return fmt.Sprintf("outbound|%d||%s", port, host), problem
}

func localJwks(jwks string) *jwtv3.JwtProvider_LocalJwks {
	return &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: jwks}}}
}

func routeMatch(m PathMatch) *routev3.RouteMatch {
	switch {
	case m.Exact != "":
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: m.Exact}}
	case m.Prefix != "":
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: m.Prefix}}
	case m.Regex != "":
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Regex}}}
	default: // suffix: a regex on the path
		return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*" + regexp.QuoteMeta(m.Suffix)}}}
	}
}
