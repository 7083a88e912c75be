package rbac

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/wardenmesh/warden/authn"
)

// Request is what Explain evaluates: the connection and, for HTTP, the
// request.
type Request struct {
	Principal string // peer SPIFFE ID (spiffe://...), empty without mTLS
	SourceIP  string // direct peer address
	RemoteIP  string // original client (X-Forwarded-For); defaults to SourceIP
	DestIP    string
	DestPort  uint32
	SNI       string
	Method    string
	Path      string // with or without a query
	Host      string
	Headers   map[string]string // lower-case names
	JWT       map[string]any    // the verified JWT payload (claim -> string, []string or a nested map), as jwt_authn writes it
}

// Decision is Explain's answer.
type Decision struct {
	Allowed bool
	Policy  string // the policy that decided, or "" for a default
	Reason  string
	Audited []string // AUDIT policies that matched (logged)
	DryRun  []string // dry-run policies that matched (would have decided)
}

// String renders the decision for people.
func (d Decision) String() string {
	verdict := "DENY"
	if d.Allowed {
		verdict = "ALLOW"
	}
	s := verdict + ": " + d.Reason
	for _, a := range d.Audited {
		s += "\n  audited by " + a
	}
	for _, a := range d.DryRun {
		s += "\n  dry run matched " + a
	}
	return s
}

// Explain evaluates the compiled filters for r, as Envoy runs them: DENY
// filters reject on a match, ALLOW filters reject when nothing matches.
func (o *Output) Explain(r Request) (Decision, error) {
	// Envoy normalises the path before any filter sees it.
	r.Path = NormalizePath(o.pathNormalization, r.Path)
	return ExplainFilters(o.Filters, r)
}

// ExplainFilters evaluates RBAC filters (FilterOf reads them back from a
// proxy's configuration) for r, in order, as Envoy runs them; r's path
// is taken as already normalized.
func ExplainFilters(filters []*Filter, r Request) (Decision, error) {
	if r.RemoteIP == "" {
		r.RemoteIP = r.SourceIP
	}
	var d Decision
	for _, f := range filters {
		if f.rules == nil && f.shadow == nil {
			continue
		}
		if f.shadow != nil {
			for _, name := range matching(f.shadow, r) {
				if f.Action == "CUSTOM" {
					return Decision{Allowed: false, Policy: name, Reason: fmt.Sprintf("%s sends the request to the external authorizer (CUSTOM); its answer decides", name)}, nil
				}
				d.DryRun = append(d.DryRun, fmt.Sprintf("%s (%s)", name, f.Action))
			}
		}
		if f.rules == nil {
			continue
		}
		m := matching(f.rules, r)
		switch f.rules.Action {
		case rbacv3.RBAC_LOG:
			d.Audited = append(d.Audited, m...)
		case rbacv3.RBAC_DENY:
			if len(m) > 0 {
				d.Allowed, d.Policy, d.Reason = false, m[0], "denied by "+m[0]
				return d, nil
			}
		case rbacv3.RBAC_ALLOW:
			if len(m) == 0 {
				d.Allowed, d.Policy, d.Reason = false, "", "no ALLOW policy matches, and ALLOW policies apply to this workload"
				return d, nil
			}
			d.Policy, d.Reason = m[0], "allowed by "+m[0]
		}
	}
	d.Allowed = true
	if d.Policy == "" {
		d.Reason = "no policy denies it, and no ALLOW policy applies"
	}
	return d, nil
}

// matching lists the policies of rb that match r, sorted by name.
func matching(rb *rbacv3.RBAC, r Request) []string {
	var out []string
	for name, p := range rb.Policies {
		if anyPrincipalMatches(p.Principals, r) && anyPermissionMatches(p.Permissions, r) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func anyPrincipalMatches(ps []*rbacv3.Principal, r Request) bool {
	for _, p := range ps {
		if principalMatches(p, r) {
			return true
		}
	}
	return false
}

func anyPermissionMatches(qs []*rbacv3.Permission, r Request) bool {
	for _, q := range qs {
		if permissionMatches(q, r) {
			return true
		}
	}
	return false
}

func principalMatches(p *rbacv3.Principal, r Request) bool {
	switch id := p.Identifier.(type) {
	case *rbacv3.Principal_Any:
		return id.Any
	case *rbacv3.Principal_AndIds:
		for _, x := range id.AndIds.Ids {
			if !principalMatches(x, r) {
				return false
			}
		}
		return true
	case *rbacv3.Principal_OrIds:
		return anyPrincipalMatches(id.OrIds.Ids, r)
	case *rbacv3.Principal_NotId:
		return !principalMatches(id.NotId, r)
	case *rbacv3.Principal_Authenticated_:
		if r.Principal == "" {
			return false
		}
		return id.Authenticated.PrincipalName == nil || stringMatches(id.Authenticated.PrincipalName, r.Principal)
	case *rbacv3.Principal_DirectRemoteIp:
		return inCIDR(id.DirectRemoteIp, r.SourceIP)
	case *rbacv3.Principal_RemoteIp:
		return inCIDR(id.RemoteIp, r.RemoteIP)
	case *rbacv3.Principal_SourcedMetadata:
		return metadataMatches(id.SourcedMetadata.GetMetadataMatcher(), r)
	case *rbacv3.Principal_Metadata:
		//lint:ignore SA1019 what Istio and warden emit (see metadataPrincipal)
		return metadataMatches(id.Metadata, r)
	case *rbacv3.Principal_Header:
		return headerMatches(id.Header, r)
	}
	return false
}

func permissionMatches(q *rbacv3.Permission, r Request) bool {
	switch rule := q.Rule.(type) {
	case *rbacv3.Permission_Any:
		return rule.Any
	case *rbacv3.Permission_AndRules:
		for _, x := range rule.AndRules.Rules {
			if !permissionMatches(x, r) {
				return false
			}
		}
		return true
	case *rbacv3.Permission_OrRules:
		return anyPermissionMatches(rule.OrRules.Rules, r)
	case *rbacv3.Permission_NotRule:
		return !permissionMatches(rule.NotRule, r)
	case *rbacv3.Permission_Header:
		return headerMatches(rule.Header, r)
	case *rbacv3.Permission_UrlPath:
		path, _, _ := strings.Cut(r.Path, "?")
		return stringMatches(rule.UrlPath.GetPath(), path)
	case *rbacv3.Permission_DestinationPort:
		return rule.DestinationPort == r.DestPort
	case *rbacv3.Permission_DestinationIp:
		return inCIDR(rule.DestinationIp, r.DestIP)
	case *rbacv3.Permission_RequestedServerName:
		return stringMatches(rule.RequestedServerName, r.SNI)
	case *rbacv3.Permission_UriTemplate:
		path, _, _ := strings.Cut(r.Path, "?")
		return templateMatches(rule.UriTemplate, path)
	}
	return false
}

func headerMatches(h *routev3.HeaderMatcher, r Request) bool {
	var v string
	var ok bool
	switch h.Name {
	case ":method":
		v, ok = r.Method, r.Method != ""
	case ":authority":
		v, ok = r.Host, r.Host != ""
	case ":path":
		v, ok = r.Path, r.Path != ""
	default:
		v, ok = r.Headers[strings.ToLower(h.Name)]
	}
	if !ok {
		return false
	}
	if h.GetPresentMatch() {
		return true
	}
	return h.GetStringMatch() != nil && stringMatches(h.GetStringMatch(), v)
}

func metadataMatches(m *matcherv3.MetadataMatcher, r Request) bool {
	if m.Filter != authn.JWTAuthnFilter || len(m.Path) < 2 || m.Path[0].GetKey() != authn.JWTPayloadKey {
		return false
	}
	var v any = r.JWT
	for _, seg := range m.Path[1:] {
		obj, ok := v.(map[string]any)
		if !ok {
			return false
		}
		if v, ok = obj[seg.GetKey()]; !ok {
			return false
		}
	}
	return valueMatches(m.GetValue(), v)
}

// valueMatches is Envoy's ValueMatcher over a JSON-like value.
func valueMatches(vm *matcherv3.ValueMatcher, v any) bool {
	switch p := vm.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_StringMatch:
		s, ok := v.(string)
		return ok && stringMatches(p.StringMatch, s)
	case *matcherv3.ValueMatcher_PresentMatch:
		return p.PresentMatch
	case *matcherv3.ValueMatcher_ListMatch:
		var list []any
		switch x := v.(type) {
		case []string:
			for _, e := range x {
				list = append(list, e)
			}
		case []any:
			list = x
		default:
			return false
		}
		for _, e := range list {
			if valueMatches(p.ListMatch.GetOneOf(), e) {
				return true
			}
		}
	case *matcherv3.ValueMatcher_OrMatch:
		for _, x := range p.OrMatch.GetValueMatchers() {
			if valueMatches(x, v) {
				return true
			}
		}
	}
	return false
}

func stringMatches(m *matcherv3.StringMatcher, v string) bool {
	if m == nil {
		return true
	}
	cmp := v
	fold := func(s string) string {
		if m.IgnoreCase {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.MatchPattern.(type) {
	case *matcherv3.StringMatcher_Exact:
		return fold(cmp) == fold(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(fold(cmp), fold(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(fold(cmp), fold(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(fold(cmp), fold(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re := cachedRegexp("^(?:" + p.SafeRegex.Regex + ")$")
		return re != nil && re.MatchString(cmp)
	}
	return false
}

func inCIDR(c *corev3.CidrRange, ip string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	pfx, err := netip.ParseAddr(c.AddressPrefix)
	if err != nil {
		return false
	}
	p := netip.PrefixFrom(pfx, int(c.GetPrefixLen().GetValue()))
	return p.Contains(a)
}
