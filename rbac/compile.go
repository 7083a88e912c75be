package rbac

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// compiled is one RBAC policy before it is put in a filter.
type compiled struct {
	name     string
	action   string // ALLOW, DENY, AUDIT, CUSTOM
	provider string
	dryRun   bool
	policy   *rbacv3.Policy // nil when the rule was dropped
}

// unsupported marks a value warden cannot express for this filter.
type unsupported struct{ msg string }

func (u unsupported) Error() string { return u.msg }

type builder struct {
	opts    Options
	reports *[]string
	where   string
}

func (b builder) report(format string, args ...any) {
	*b.reports = append(*b.reports, b.where+": "+fmt.Sprintf(format, args...))
}

// stringMatch turns Istio's exact, "prefix*", "*suffix" and "*" into a
// StringMatcher.
func stringMatch(v string, ignoreCase bool) *matcherv3.StringMatcher {
	switch {
	case v == "*":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}}
	case strings.HasSuffix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}, IgnoreCase: ignoreCase}
	case strings.HasPrefix(v, "*"):
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: strings.TrimPrefix(v, "*")}, IgnoreCase: ignoreCase}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}, IgnoreCase: ignoreCase}
}

func principalName(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

func regex(r string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: r}}}
}

// principal is Istio's source.principal: "cluster.local/ns/x/sa/y" matched
// against the peer's SPIFFE ID.
func principal(v string) *rbacv3.Principal {
	if v == "*" {
		return principalName(regex(".+"))
	}
	if strings.HasPrefix(v, "*") {
		return principalName(stringMatch(v, false))
	}
	return principalName(stringMatch("spiffe://"+v, false))
}

func namespacePrincipal(ns string) *rbacv3.Principal {
	if ns == "*" {
		return principalName(regex(".+"))
	}
	return principalName(regex(".*/ns/" + regexpQuote(ns) + "/.*"))
}

func serviceAccountPrincipal(v string) (*rbacv3.Principal, error) {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok || ns == "" || sa == "" {
		return nil, unsupported{fmt.Sprintf("serviceAccount %q is not namespace/name", v)}
	}
	return principalName(regex(".*/ns/" + regexpQuote(ns) + "/sa/" + regexpQuote(sa))), nil
}

func regexpQuote(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func cidr(v string) (*corev3.CidrRange, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return nil, unsupported{fmt.Sprintf("%q is not an IP address or CIDR block", v)}
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

// requestPrincipal is "issuer/subject" (either side may use *) matched
// against the verified JWT payload authn's jwt_authn filter writes to
// metadata; "*" means any verified token.
func requestPrincipal(v string) (*rbacv3.Principal, error) {
	if v == "*" {
		return claimPrincipal("iss", "*"), nil
	}
	i := strings.LastIndex(v, "/")
	if i <= 0 || i == len(v)-1 {
		return nil, unsupported{fmt.Sprintf("requestPrincipal %q is not issuer/subject", v)}
	}
	iss, sub := v[:i], v[i+1:]
	if iss == "*" {
		return claimPrincipal("sub", sub), nil
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{
		claimPrincipal("iss", iss), claimPrincipal("sub", sub)}}}}, nil
}

// claimPrincipal matches a payload claim, as a string or as one element of
// a list (aud, groups).
func claimPrincipal(claim, value string) *rbacv3.Principal {
	m := func(vm *matcherv3.ValueMatcher) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_SourcedMetadata{SourcedMetadata: &rbacv3.SourcedMetadata{MetadataMatcher: &matcherv3.MetadataMatcher{
			Filter: "envoy.filters.http.jwt_authn",
			Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: authn.JWTPayloadKey}}, {Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: claim}}},
			Value:  vm,
		}}}}
	}
	str := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: stringMatch(value, false)}}
	if claim == "iss" || claim == "sub" || claim == "azp" {
		return m(str)
	}
	list := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: str}}}}
	return orIDs([]*rbacv3.Principal{m(str), m(list)})
}

func header(name string, m *matcherv3.StringMatcher) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}
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

var anyPrincipal = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
var anyPermission = &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}

// field is one rule field: its values (ORed), negated for not* forms,
// compiled to T (a principal or a permission) by mk.
type field[T any] struct {
	name   string
	values []string
	not    bool
	http   bool // meaningless on a TCP port
	mk     func(string) (T, error)
}

type principalField = field[*rbacv3.Principal]
type permissionField = field[*rbacv3.Permission]

// compileFields compiles each field into one matcher (values ORed by or,
// negated by not). An inexpressible value fails the whole rule when strict
// (ALLOW); otherwise (DENY/AUDIT) only that field is dropped, and reported.
func compileFields[T any](b builder, fs []field[T], strict bool, or func([]T) T, not func(T) T) ([]T, error) {
	var out []T
	for _, f := range fs {
		if len(f.values) == 0 {
			continue
		}
		if f.http && b.opts.TCP {
			err := unsupported{fmt.Sprintf("%s applies to HTTP only", f.name)}
			if strict {
				return nil, err
			}
			b.report("%v; condition ignored", err)
			continue
		}
		var ms []T
		var ferr error
		for _, v := range f.values {
			m, err := f.mk(v)
			if err != nil {
				ferr = err
				break
			}
			ms = append(ms, m)
		}
		if ferr != nil {
			if strict {
				return nil, fmt.Errorf("%s: %w", f.name, ferr)
			}
			b.report("%s: %v; condition ignored", f.name, ferr)
			continue
		}
		m := or(ms)
		if f.not {
			m = not(m)
		}
		out = append(out, m)
	}
	return out, nil
}

// sides builds the ANDed principal and permission lists of one rule.
func (b builder) sides(pfs []principalField, qfs []permissionField, strict bool) ([]*rbacv3.Principal, []*rbacv3.Permission, error) {
	ps, err := compileFields(b, pfs, strict, orIDs, notID)
	if err != nil {
		return nil, nil, err
	}
	qs, err := compileFields(b, qfs, strict, orRules, notRule)
	if err != nil {
		return nil, nil, err
	}
	return ps, qs, nil
}

func andIDs(ps []*rbacv3.Principal) []*rbacv3.Principal {
	if len(ps) == 0 {
		return []*rbacv3.Principal{anyPrincipal}
	}
	if len(ps) == 1 {
		return ps
	}
	return []*rbacv3.Principal{{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ps}}}}
}

func andRules(qs []*rbacv3.Permission) []*rbacv3.Permission {
	if len(qs) == 0 {
		return []*rbacv3.Permission{anyPermission}
	}
	if len(qs) == 1 {
		return qs
	}
	return []*rbacv3.Permission{{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: qs}}}}
}

func portPermission(v string) (*rbacv3.Permission, error) {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return nil, unsupported{fmt.Sprintf("port %q is not a number from 1 to 65535", v)}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}, nil
}

func pathPermission(v string) (*rbacv3.Permission, error) {
	if strings.Contains(strings.Trim(v, "*"), "*") {
		return nil, unsupported{fmt.Sprintf("path %q: * is allowed only at the start or the end", v)}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: stringMatch(v, false)}}}}, nil
}

func headerPermission(name string, ignoreCase bool) func(string) (*rbacv3.Permission, error) {
	return func(v string) (*rbacv3.Permission, error) {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: header(name, stringMatch(v, ignoreCase))}}, nil
	}
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

func wrapP(f func(string) *rbacv3.Principal) func(string) (*rbacv3.Principal, error) {
	return func(v string) (*rbacv3.Principal, error) { return f(v), nil }
}

// rule compiles one AuthorizationPolicy rule.
func (b builder) rule(r api.Rule, strict bool) (*rbacv3.Policy, error) {
	var pfs []principalField
	var qfs []permissionField
	for _, f := range r.From {
		s := f.Source
		if s == nil {
			continue
		}
		pfs = append(pfs,
			principalField{"source.principals", s.Principals, false, false, wrapP(principal)},
			principalField{"source.notPrincipals", s.NotPrincipals, true, false, wrapP(principal)},
			principalField{"source.requestPrincipals", s.RequestPrincipals, false, true, requestPrincipal},
			principalField{"source.notRequestPrincipals", s.NotRequestPrincipals, true, true, requestPrincipal},
			principalField{"source.namespaces", s.Namespaces, false, false, wrapP(namespacePrincipal)},
			principalField{"source.notNamespaces", s.NotNamespaces, true, false, wrapP(namespacePrincipal)},
			principalField{"source.serviceAccounts", s.ServiceAccounts, false, false, serviceAccountPrincipal},
			principalField{"source.notServiceAccounts", s.NotServiceAccounts, true, false, serviceAccountPrincipal},
			principalField{"source.ipBlocks", s.IPBlocks, false, false, ipPrincipal(false)},
			principalField{"source.notIpBlocks", s.NotIPBlocks, true, false, ipPrincipal(false)},
			principalField{"source.remoteIpBlocks", s.RemoteIPBlocks, false, false, ipPrincipal(true)},
			principalField{"source.notRemoteIpBlocks", s.NotRemoteIPBlocks, true, false, ipPrincipal(true)},
		)
	}
	for _, t := range r.To {
		o := t.Operation
		if o == nil {
			continue
		}
		qfs = append(qfs,
			permissionField{"operation.hosts", o.Hosts, false, true, headerPermission(":authority", true)},
			permissionField{"operation.notHosts", o.NotHosts, true, true, headerPermission(":authority", true)},
			permissionField{"operation.ports", o.Ports, false, false, portPermission},
			permissionField{"operation.notPorts", o.NotPorts, true, false, portPermission},
			permissionField{"operation.methods", o.Methods, false, true, headerPermission(":method", false)},
			permissionField{"operation.notMethods", o.NotMethods, true, true, headerPermission(":method", false)},
			permissionField{"operation.paths", o.Paths, false, true, pathPermission},
			permissionField{"operation.notPaths", o.NotPaths, true, true, pathPermission},
		)
	}
	for i, c := range r.When {
		pf, qf, err := condition(fmt.Sprintf("when[%d]", i), c)
		if err != nil {
			if strict {
				return nil, err
			}
			b.report("%v; condition ignored", err)
			continue
		}
		if pf != nil {
			pfs = append(pfs, *pf)
		}
		if qf != nil {
			qfs = append(qfs, *qf)
		}
	}
	ps, qs, err := b.sides(pfs, qfs, strict)
	if err != nil {
		return nil, err
	}
	return &rbacv3.Policy{Principals: andIDs(ps), Permissions: andRules(qs)}, nil
}

// condition compiles a `when` key onto the side it describes.
func condition(where string, c api.Condition) (*principalField, *permissionField, error) {
	vals, not := c.Values, false
	if len(c.NotValues) > 0 && len(c.Values) == 0 {
		vals, not = c.NotValues, true
	}
	if len(vals) == 0 {
		return nil, nil, unsupported{fmt.Sprintf("%s: %s has no values", where, c.Key)}
	}
	name := where + "." + c.Key
	switch key := c.Key; {
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		h := strings.TrimSuffix(strings.TrimPrefix(key, "request.headers["), "]")
		return nil, &permissionField{name, vals, not, true, headerPermission(strings.ToLower(h), false)}, nil
	case key == "source.ip":
		return &principalField{name, vals, not, false, ipPrincipal(false)}, nil, nil
	case key == "remote.ip":
		return &principalField{name, vals, not, false, ipPrincipal(true)}, nil, nil
	case key == "source.namespace":
		return &principalField{name, vals, not, false, wrapP(namespacePrincipal)}, nil, nil
	case key == "source.principal":
		return &principalField{name, vals, not, false, wrapP(principal)}, nil, nil
	case key == "request.auth.principal":
		return &principalField{name, vals, not, true, requestPrincipal}, nil, nil
	case key == "destination.port":
		return nil, &permissionField{name, vals, not, false, portPermission}, nil
	case key == "destination.ip":
		return nil, &permissionField{name, vals, not, false, func(v string) (*rbacv3.Permission, error) {
			cr, err := cidr(v)
			if err != nil {
				return nil, err
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cr}}, nil
		}}, nil
	case key == "connection.sni":
		return nil, &permissionField{name, vals, not, false, func(v string) (*rbacv3.Permission, error) {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_RequestedServerName{RequestedServerName: stringMatch(v, false)}}, nil
		}}, nil
	case key == "request.auth.audiences":
		return &principalField{name, vals, not, true, wrapP(func(v string) *rbacv3.Principal { return claimPrincipal("aud", v) })}, nil, nil
	case key == "request.auth.presenter":
		return &principalField{name, vals, not, true, wrapP(func(v string) *rbacv3.Principal { return claimPrincipal("azp", v) })}, nil, nil
	case strings.HasPrefix(key, "request.auth.claims[") && strings.HasSuffix(key, "]"):
		claim := strings.TrimSuffix(strings.TrimPrefix(key, "request.auth.claims["), "]")
		if claim == "" || strings.ContainsAny(claim, "[]") {
			return nil, nil, unsupported{fmt.Sprintf("%s: nested or empty claim in %q", where, key)}
		}
		return &principalField{name, vals, not, true, wrapP(func(v string) *rbacv3.Principal { return claimPrincipal(claim, v) })}, nil, nil
	}
	return nil, nil, unsupported{fmt.Sprintf("%s: unknown key %q", where, c.Key)}
}

// selected lists the AuthorizationPolicies that apply to w, sorted by
// namespace (root first) and name.
func selected(objs []*api.AuthorizationPolicy, w Workload, opts Options) []*api.AuthorizationPolicy {
	var out []*api.AuthorizationPolicy
	for _, p := range objs {
		if p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0 {
			continue // gateway/waypoint attachment: not a sidecar's
		}
		ns := p.Metadata.Namespace
		wide := p.Spec.Selector == nil || len(p.Spec.Selector.MatchLabels) == 0
		switch {
		case ns == opts.RootNamespace && wide:
		case ns == w.Namespace && (wide || matches(p.Spec.Selector.MatchLabels, w.Labels)):
		default:
			continue
		}
		out = append(out, p)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Metadata, out[j].Metadata
		if (a.Namespace == opts.RootNamespace) != (b.Namespace == opts.RootNamespace) {
			return a.Namespace == opts.RootNamespace
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return out
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// PolicyName is the RBAC policy name Istio users read in Envoy stats.
func PolicyName(ns, name string, rule int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", ns, name, rule)
}

func compilePolicy(p *api.AuthorizationPolicy, opts Options, reports *[]string) []compiled {
	action := p.Spec.Action
	if action == "" {
		action = "ALLOW"
	}
	dry := strings.EqualFold(p.Metadata.Annotations["istio.io/dry-run"], "true")
	provider := ""
	if p.Spec.Provider != nil {
		provider = p.Spec.Provider.Name
	}
	if action == "CUSTOM" && provider == "" {
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s/%s: CUSTOM needs provider.name; policy ignored", p.Metadata.Namespace, p.Metadata.Name))
		return nil
	}
	var out []compiled
	for i, r := range p.Spec.Rules {
		name := PolicyName(p.Metadata.Namespace, p.Metadata.Name, i)
		b := builder{opts: opts, reports: reports, where: "AuthorizationPolicy " + p.Metadata.Namespace + "/" + p.Metadata.Name + " rule " + strconv.Itoa(i)}
		pol, err := b.rule(r, action == "ALLOW")
		if err != nil {
			b.report("%v; rule dropped (ALLOW is narrowed, never widened)", err)
		}
		out = append(out, compiled{name: name, action: action, provider: provider, dryRun: dry, policy: pol})
	}
	if len(p.Spec.Rules) == 0 && action == "ALLOW" {
		// An ALLOW policy without rules matches nothing: it denies all.
		out = append(out, compiled{name: PolicyName(p.Metadata.Namespace, p.Metadata.Name, 0), action: action, dryRun: dry})
	}
	return out
}
