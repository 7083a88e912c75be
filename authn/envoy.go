package authn

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
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
			out.FilterChains = append(out.FilterChains, ix.tlsChain(p.Port, "tls"))
		case Permissive:
			inspector = true
			out.FilterChains = append(out.FilterChains, ix.tlsChain(p.Port, "tls"), plainChain(p.Port, "raw_buffer"))
		case Disable:
			out.FilterChains = append(out.FilterChains, plainChain(p.Port, ""))
		}
	}
	if inspector {
		cfg, _ := anypb.New(&tlsinspector.TlsInspector{})
		out.ListenerFilters = []*listenerv3.ListenerFilter{{Name: TLSInspector, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: cfg}}}
	}
	if len(s.JWT) > 0 {
		if out.JWT, err = jwtConfig(s.JWT); err != nil {
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
// accepts any SPIFFE ID in the trust domain.
func (ix *Index) CommonTLS() *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{ix.sdsConfig("default")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: ix.opts.TrustDomain.IDString() + "/"}},
			}}},
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

func (ix *Index) tlsChain(port uint32, transport string) *listenerv3.FilterChain {
	ctx, _ := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: ix.CommonTLS(), RequireClientCertificate: wrapperspb.Bool(true)})
	return &listenerv3.FilterChain{
		Name:             fmt.Sprintf("inbound|%d|mtls", port),
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), TransportProtocol: transport},
		TransportSocket:  &corev3.TransportSocket{Name: TLSSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}},
	}
}

func plainChain(port uint32, transport string) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name:             fmt.Sprintf("inbound|%d|plaintext", port),
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), TransportProtocol: transport},
	}
}

// jwtConfig builds jwt_authn: a provider per issuer (the verified payload
// in dynamic metadata under JWTPayloadKey), and rules that accept a request with a valid
// token from any provider, or with none (authorization decides), but
// reject an invalid one.
func jwtConfig(rules []JWTRule) (*jwtv3.JwtAuthentication, error) {
	byIssuer := map[string]JWTRule{}
	var order []string
	for _, r := range rules {
		if _, ok := byIssuer[r.Issuer]; !ok {
			order = append(order, r.Issuer)
		}
		byIssuer[r.Issuer] = r // the later rule for an issuer wins
	}
	sort.Strings(order)
	cfg := &jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{}}
	var reqs []*jwtv3.JwtRequirement
	var excluded []PathMatch
	var included []PathMatch
	for i, iss := range order {
		r := byIssuer[iss]
		name := fmt.Sprintf("origins-%d", i)
		p := &jwtv3.JwtProvider{
			Issuer: r.Issuer, Audiences: r.Audiences, Forward: r.ForwardOriginalToken,
			FromParams: r.FromParams, PayloadInMetadata: JWTPayloadKey, ForwardPayloadHeader: r.OutputPayloadToHeader,
		}
		for _, h := range r.FromHeaders {
			p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.Name, ValuePrefix: h.Prefix})
		}
		switch {
		case r.Jwks != "":
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: r.Jwks}}}
		case r.JwksURI != "":
			u, _ := url.Parse(r.JwksURI)
			port := u.Port()
			if port == "" {
				port = "443"
			}
			p.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri:       &corev3.HttpUri{Uri: r.JwksURI, HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: fmt.Sprintf("outbound|%s||%s", port, u.Hostname())}, Timeout: durationpb.New(5 * time.Second)},
				CacheDuration: durationpb.New(5 * time.Minute),
			}}
		default:
			return nil, fmt.Errorf("authn: JWT issuer %s (%s) has neither jwksUri nor jwks", r.Issuer, r.Source)
		}
		cfg.Providers[name] = p
		reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}})
		excluded = append(excluded, r.ExcludePaths...)
		included = append(included, r.IncludePaths...)
	}
	reqs = append(reqs, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	req := &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: reqs}}}
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
