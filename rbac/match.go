package rbac

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	uritemplatev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/path/match/uri_template/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/authn"
)

// The matchers below follow Istio's authorization generators value for
// value (pilot/pkg/security/authz/model), so a policy means in warden what
// it means in Istio. Where warden refuses what Istio accepts, the error
// says so and docs/policy-authz.md lists the difference.

// unsupported marks a value warden cannot express for this filter.
type unsupported struct{ msg string }

func (u unsupported) Error() string { return u.msg }

func exact(v string, ignoreCase bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}, IgnoreCase: ignoreCase}
}

func prefix(v string, ignoreCase bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v}, IgnoreCase: ignoreCase}
}

func suffix(v string, ignoreCase bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v}, IgnoreCase: ignoreCase}
}

func regex(r string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: r}}}
}

// stringMatch is Istio's string value: exact, "prefix*", "*suffix", and
// "*" (present and not empty). With pre, the value is matched after pre
// (which a leading "*" may not cover: "*x" then becomes pre.*x).
func stringMatch(v, pre string) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return regex(".+")
	case strings.HasPrefix(v, "*"):
		if pre == "" {
			return suffix(strings.TrimPrefix(v, "*"), false)
		}
		return regex(regexp.QuoteMeta(pre) + ".*" + regexp.QuoteMeta(strings.TrimPrefix(v, "*")))
	case strings.HasSuffix(v, "*"):
		return prefix(pre+strings.TrimSuffix(v, "*"), false)
	}
	return exact(pre+v, false)
}

func authenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// principal is source.principals: "<trust domain>/ns/<ns>/sa/<sa>",
// matched against the peer's SPIFFE ID.
func principal(v string) (*rbacv3.Principal, error) {
	if v == "" {
		return nil, unsupported{"empty principal"}
	}
	return authenticated(stringMatch(v, "spiffe://")), nil
}

// namespacePrincipal is source.namespaces: each * matches any run of
// characters (Istio accepts it anywhere in the value).
func namespacePrincipal(v string) (*rbacv3.Principal, error) {
	if v == "" {
		return nil, unsupported{"empty namespace"}
	}
	parts := strings.Split(v, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return authenticated(regex(".*/ns/" + strings.Join(parts, ".*") + "/.*")), nil
}

// serviceAccountPrincipal is source.serviceAccounts: "ns/sa", or "sa" in
// the policy's own namespace. api refuses wildcards and other shapes.
func serviceAccountPrincipal(policyNS string) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		if ns == "" || sa == "" || strings.Contains(v, "*") || strings.Count(v, "/") > 1 {
			return nil, unsupported{fmt.Sprintf("serviceAccount %q is not \"namespace/name\" or \"name\" without wildcards", v)}
		}
		return authenticated(regex("spiffe://.+/ns/" + regexp.QuoteMeta(ns) + "/(.+/|)sa/" + regexp.QuoteMeta(sa) + "(/.+)?")), nil
	}
}

// trustDomainPrincipal is source.trustDomains: the peer's SPIFFE ID is in
// that trust domain; one * at the start or the end stays within it.
func trustDomainPrincipal(v string) (*rbacv3.Principal, error) {
	switch {
	case v == "":
		return nil, unsupported{"empty trust domain"}
	case strings.Contains(v, "/") || strings.Count(v, "*") > 1 ||
		(strings.Contains(v, "*") && v != "*" && !strings.HasPrefix(v, "*") && !strings.HasSuffix(v, "*")):
		return nil, unsupported{fmt.Sprintf("trust domain %q: one * at the start or the end, and no /", v)}
	case v == "*":
		return authenticated(prefix("spiffe://", false)), nil
	case !strings.Contains(v, "*"):
		return authenticated(prefix("spiffe://"+v+"/", false)), nil
	}
	before, after, _ := strings.Cut(v, "*")
	return authenticated(regex("spiffe://" + regexp.QuoteMeta(before) + "[^/]*" + regexp.QuoteMeta(after) + "/.*")), nil
}

func cidr(v string) (*corev3.CidrRange, error) {
	var p netip.Prefix
	var err error
	if strings.Contains(v, "/") {
		p, err = netip.ParsePrefix(v)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(v); err == nil {
			p = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil {
		return nil, unsupported{fmt.Sprintf("%q is not an IP address or CIDR block", v)}
	}
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

func ipPrincipal(remote bool) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		c, err := cidr(v)
		if err != nil {
			return nil, err
		}
		if remote {
			return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: c}}, nil
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: c}}, nil
	}
}

var matchAny = regex(".+")

// requestPrincipal is Istio's split of "issuer/subject": at the last "/"
// (issuers are URLs); a value without "/" is an issuer with any subject
// only in its "prefix*" form, else an issuer with an empty subject; a
// leading or trailing * applies to the side it touches.
func requestPrincipal(v string) (*rbacv3.Principal, error) {
	if v == "" {
		return nil, unsupported{"empty requestPrincipal"}
	}
	i := strings.LastIndex(v, "/")
	found := i >= 0
	iss, sub := v, ""
	if found {
		iss, sub = v[:i], v[i+1:]
	}
	var mi, ms *matcherv3.StringMatcher
	switch {
	case v == "*":
		mi, ms = matchAny, matchAny
	case strings.HasPrefix(v, "*"):
		if found {
			mi = suffix(strings.TrimPrefix(iss, "*"), false)
			if iss == "*" {
				mi = matchAny
			}
			ms = exact(sub, false)
		} else {
			mi, ms = matchAny, suffix(strings.TrimPrefix(v, "*"), false)
		}
	case strings.HasSuffix(v, "*"):
		if found {
			mi = exact(iss, false)
			ms = prefix(strings.TrimSuffix(sub, "*"), false)
			if sub == "*" {
				ms = matchAny
			}
		} else {
			mi, ms = prefix(strings.TrimSuffix(v, "*"), false), matchAny
		}
	default:
		mi, ms = exact(iss, false), exact(sub, false)
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{
		claimString("iss", mi), claimString("sub", ms)}}}}, nil
}

func payloadPath(claims []string) []*matcherv3.MetadataMatcher_PathSegment {
	path := []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: authn.JWTPayloadKey}}}
	for _, c := range claims {
		path = append(path, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: c}})
	}
	return path
}

// metadataPrincipal uses the metadata principal Istio emits: Envoy
// deprecates it for sourced_metadata, but grpc-go's RBAC engine rejects
// the whole filter on sourced_metadata and reads metadata as "never
// matches" (fail closed for ALLOW).
func metadataPrincipal(m *matcherv3.MetadataMatcher) *rbacv3.Principal {
	//lint:ignore SA1019 Istio's form; see above
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: m}}
}

// claimString matches a claim holding a string (iss, sub).
func claimString(claim string, m *matcherv3.StringMatcher) *rbacv3.Principal {
	return metadataPrincipal(&matcherv3.MetadataMatcher{Filter: authn.JWTAuthnFilter, Path: payloadPath([]string{claim}),
		Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: m}}})
}

// claimValue matches a (possibly nested) claim holding v as a string or
// as one element of a list (aud, groups, scope after normalisation).
func claimValue(claims []string) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		if v == "" {
			return nil, unsupported{"empty claim value"}
		}
		str := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(v, "")}}
		list := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: str}}}}
		return metadataPrincipal(&matcherv3.MetadataMatcher{Filter: authn.JWTAuthnFilter, Path: payloadPath(claims),
			Value: &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_OrMatch{OrMatch: &matcherv3.OrMatcher{ValueMatchers: []*matcherv3.ValueMatcher{list, str}}}}}), nil
	}
}

// claimNames parses Istio's "[a]" or nested "[a][b]" claim suffix.
func claimNames(s string) ([]string, error) {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") || len(s) < 3 {
		return nil, unsupported{fmt.Sprintf("claim %q is not [name] or [name][nested]", s)}
	}
	parts := strings.Split(s[1:len(s)-1], "][")
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, "[]") {
			return nil, unsupported{fmt.Sprintf("claim %q is not [name] or [name][nested]", s)}
		}
	}
	return parts, nil
}

// headerMatcher is Istio's header value: "*" is presence, "*x" a suffix,
// "x*" a prefix, else exact.
func headerMatcher(name, v string, ignoreCase bool) (*routev3.HeaderMatcher, error) {
	var m *matcherv3.StringMatcher
	switch {
	case v == "":
		return nil, unsupported{fmt.Sprintf("empty value for %s", name)}
	case v == "*":
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}, nil
	case strings.HasPrefix(v, "*"):
		m = suffix(v[1:], ignoreCase)
	case strings.HasSuffix(v, "*"):
		m = prefix(v[:len(v)-1], ignoreCase)
	default:
		m = exact(v, ignoreCase)
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}, nil
}

func headerPermission(name string, ignoreCase bool) func(string) (*rbacv3.Permission, error) {
	return func(v string) (*rbacv3.Permission, error) {
		h, err := headerMatcher(name, v, ignoreCase)
		if err != nil {
			return nil, err
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: h}}, nil
	}
}

func headerPrincipal(name string) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) {
		h, err := headerMatcher(name, v, false)
		if err != nil {
			return nil, err
		}
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: h}}, nil
	}
}

func portPermission(v string) (*rbacv3.Permission, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return nil, unsupported{fmt.Sprintf("port %q is not a number from 0 to 65535", v)}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}, nil
}

// Istio's path templates: {*} is one segment, {**} any number of them.
const (
	matchOneTemplate = "{*}"
	matchAnyTemplate = "{**}"
	// URITemplateName is the typed extension name Istio gives the matcher.
	URITemplateName = "uri-template"
)

var templateLiteral = regexp.MustCompile(`^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$`)

// checkPathTemplate applies Istio's rule: {*} and {**} are whole
// segments, {**} comes last among them, and the other segments are
// plain literals.
func checkPathTemplate(path string) error {
	any := false
	for _, seg := range strings.Split(strings.Trim(path, "/"), "/") {
		switch {
		case seg == matchOneTemplate && !any:
			continue
		case seg == matchAnyTemplate && !any:
			any = true
			continue
		case seg == matchOneTemplate || seg == matchAnyTemplate:
			return unsupported{fmt.Sprintf("path %q: {**} must be the last template operator", path)}
		case strings.ContainsAny(seg, "{}"):
			return unsupported{fmt.Sprintf("path %q: { and } only as {*} or {**} segments", path)}
		case !templateLiteral.MatchString(seg):
			return unsupported{fmt.Sprintf("path %q: segment %q is not a valid literal in a path template", path, seg)}
		}
	}
	return nil
}

// pathPermission is paths/notPaths: Istio's string forms on the path
// without its query, or a URI template when the value holds {*} or {**}.
// A * in the middle of a path is refused (Istio matches it literally,
// which is never what its author meant).
func pathPermission(v string) (*rbacv3.Permission, error) {
	if v == "" {
		return nil, unsupported{"empty path"}
	}
	if strings.Contains(v, matchOneTemplate) || strings.Contains(v, matchAnyTemplate) {
		if err := checkPathTemplate(v); err != nil {
			return nil, err
		}
		t := strings.NewReplacer(matchAnyTemplate, "**", matchOneTemplate, "*").Replace(v)
		a, err := anypb.New(&uritemplatev3.UriTemplateMatchConfig{PathTemplate: t})
		if err != nil {
			return nil, err
		}
		return &rbacv3.Permission{Rule: &rbacv3.Permission_UriTemplate{UriTemplate: &corev3.TypedExtensionConfig{Name: URITemplateName, TypedConfig: a}}}, nil
	}
	if strings.Contains(strings.Trim(v, "*"), "*") {
		return nil, unsupported{fmt.Sprintf("path %q: * is allowed only at the start or the end (use {*} or {**} for segments)", v)}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: stringMatch(v, "")}}}}, nil
}

func destIPPermission(v string) (*rbacv3.Permission, error) {
	c, err := cidr(v)
	if err != nil {
		return nil, err
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: c}}, nil
}

func sniPermission(v string) (*rbacv3.Permission, error) {
	if v == "" {
		return nil, unsupported{"empty SNI"}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: stringMatch(v, "")}}, nil
}

func orIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func notID(p *rbacv3.Principal) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

func orRules(rs []*rbacv3.Permission) *rbacv3.Permission {
	if len(rs) == 1 {
		return rs[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rs}}}
}

func notRule(p *rbacv3.Permission) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

func andIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ps) {
	case 0:
		return anyPrincipal
	case 1:
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func andRules(qs []*rbacv3.Permission) *rbacv3.Permission {
	switch len(qs) {
	case 0:
		return anyPermission
	case 1:
		return qs[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: qs}}}
}

var anyPrincipal = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
var anyPermission = &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
