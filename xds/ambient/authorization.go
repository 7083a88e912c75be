package ambient

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

// Names Istio gives the Authorizations it derives (pilot/pkg/model
// authentication.go and pilot/pkg/serviceregistry/ambient policies.go);
// '_' cannot appear in a Kubernetes name, so they collide with none.
const (
	StaticStrictName   = "istio_converted_static_strict"
	convertedPAPrefix  = "converted_peer_authentication_"
	dryRunAnnotation   = "istio.io/dry-run"
	modeStrict         = "STRICT"
	modePermissive     = "PERMISSIVE"
	modeDisable        = "DISABLE"
	actionAllow        = "ALLOW"
	actionDeny         = "DENY"
	l7AllowConsequence = "in an ALLOW policy the rules that use them are left out and match nothing (narrower than written)"
	l7DenyConsequence  = "in a DENY policy they are left out of their rules, which then deny more than written"
)

// l4When are the condition keys ztunnel evaluates; every other key is an
// HTTP attribute (Istio's l4WhenAttributes).
var l4When = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// authorization is a compiled policy with the selector that attaches it
// to workloads (nil: namespace or global scope).
type authorization struct {
	auth     *security.Authorization
	selector map[string]string
}

func (a *authorization) key() string { return a.auth.Namespace + "/" + a.auth.Name }

func presence() *security.StringMatch {
	return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
}

// notAuthenticated matches a connection without a peer identity
// (plaintext): DENY with it is STRICT mTLS.
func notAuthenticated(ports []uint32) *security.Match {
	return &security.Match{NotPrincipals: []*security.StringMatch{presence()}, DestinationPorts: ports}
}

// staticStrict is Istio's one DENY policy for every workload whose
// effective mTLS mode is STRICT.
func staticStrict(root string) *security.Authorization {
	return &security.Authorization{
		Name: StaticStrictName, Namespace: root, Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{{Matches: []*security.Match{notAuthenticated(nil)}}}}},
	}
}

// convertAuthorizationPolicy compiles p for ztunnel as Istio's
// convertAuthorizationPolicy does: nil when ztunnel gets nothing of it
// (targetRef policies are for waypoints; AUDIT and CUSTOM are not
// enforced by ztunnel; dry-run is off in istiod by default). What ztunnel
// cannot evaluate never widens access: an ALLOW rule using it is left
// out (it matches nothing), a DENY rule loses the condition (it denies
// more). Each is reported.
func convertAuthorizationPolicy(root string, p *api.AuthorizationPolicy, reports *[]string) *authorization {
	name := p.Metadata.Namespace + "/" + p.Metadata.Name
	if v, ok := p.Metadata.Annotations[dryRunAnnotation]; ok {
		if dry, err := strconv.ParseBool(v); err == nil && dry {
			*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s: dry-run policies are not sent to ztunnel (as istiod, whose AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY is off by default)", name))
			return nil
		}
	}
	if p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0 {
		return nil // a waypoint's policy; waypoints enforce it, not ztunnel
	}
	action := security.Action_ALLOW
	switch p.Spec.Action {
	case "", actionAllow:
	case actionDeny:
		action = security.Action_DENY
	default:
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s: ztunnel does not enforce the %s action; the policy is not sent to ztunnel (as in Istio); a waypoint enforces it", name, p.Spec.Action))
		return nil
	}
	scope := security.Scope_WORKLOAD_SELECTOR
	if p.Spec.Selector == nil {
		scope = security.Scope_NAMESPACE
		if p.Metadata.Namespace == root {
			scope = security.Scope_GLOBAL
		}
	}
	out := &security.Authorization{Name: p.Metadata.Name, Namespace: p.Metadata.Namespace, Scope: scope, Action: action}
	unsupported := map[string]bool{}
	for i, r := range p.Spec.Rules {
		rules, l7, bad := compileRule(action, r, p.Metadata.Namespace)
		for _, f := range l7 {
			unsupported[f] = true
		}
		for _, b := range bad {
			*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s rule %d: %s", name, i, b))
		}
		if rules != nil {
			out.Groups = append(out.Groups, &security.Group{Rules: rules})
		}
	}
	if len(unsupported) > 0 {
		fields := make([]string, 0, len(unsupported))
		for f := range unsupported {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		consequence := l7AllowConsequence
		if action == security.Action_DENY {
			consequence = l7DenyConsequence
		}
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s: ztunnel does not evaluate HTTP attributes (found: %s); %s; attach the policy to a waypoint (targetRefs) to enforce them", name, strings.Join(fields, ", "), consequence))
	}
	a := &authorization{auth: out}
	if p.Spec.Selector != nil && len(p.Spec.Selector.MatchLabels) > 0 {
		a.selector = p.Spec.Selector.MatchLabels
	}
	return a
}

// compileRule is one rule: its to, from and when parts are ANDed rules,
// each a list of ORed matches (Istio's handleRule). l7 names the fields
// ztunnel cannot evaluate; bad describes values that do not parse.
func compileRule(action security.Action, r api.Rule, ns string) (rules []*security.Rules, l7, bad []string) {
	allow := action == security.Action_ALLOW
	drop := false
	var to, from []*security.Match
	for _, t := range r.To {
		op := t.Operation
		if op == nil {
			op = &api.Operation{}
		}
		l7 = append(l7, present(map[string]int{"hosts": len(op.Hosts), "notHosts": len(op.NotHosts), "methods": len(op.Methods),
			"notMethods": len(op.NotMethods), "paths": len(op.Paths), "notPaths": len(op.NotPaths)})...)
		m := &security.Match{}
		m.DestinationPorts, drop = ports(op.Ports, allow, false, "ports", &bad, drop)
		m.NotDestinationPorts, drop = ports(op.NotPorts, allow, true, "notPorts", &bad, drop)
		to = append(to, m)
	}
	for _, f := range r.From {
		s := f.Source
		if s == nil {
			s = &api.Source{}
		}
		// trustDomains is not a field of Istio's Source; warden reads it
		// for sidecars but ztunnel has no such match.
		l7 = append(l7, present(map[string]int{"remoteIpBlocks": len(s.RemoteIPBlocks), "notRemoteIpBlocks": len(s.NotRemoteIPBlocks),
			"requestPrincipals": len(s.RequestPrincipals), "notRequestPrincipals": len(s.NotRequestPrincipals),
			"trustDomains": len(s.TrustDomains), "notTrustDomains": len(s.NotTrustDomains)})...)
		m := &security.Match{
			Namespaces: stringMatches(s.Namespaces), NotNamespaces: stringMatches(s.NotNamespaces),
			ServiceAccounts: serviceAccounts(s.ServiceAccounts, ns), NotServiceAccounts: serviceAccounts(s.NotServiceAccounts, ns),
			Principals: stringMatches(s.Principals), NotPrincipals: stringMatches(s.NotPrincipals),
		}
		m.SourceIps, drop = addresses(s.IPBlocks, allow, false, "ipBlocks", &bad, drop)
		m.NotSourceIps, drop = addresses(s.NotIPBlocks, allow, true, "notIpBlocks", &bad, drop)
		from = append(from, m)
	}
	rules = []*security.Rules{}
	if len(to) > 0 {
		rules = append(rules, &security.Rules{Matches: to})
	}
	if len(from) > 0 {
		rules = append(rules, &security.Rules{Matches: from})
	}
	for _, w := range r.When {
		if !l4When[w.Key] {
			l7 = append(l7, w.Key)
		}
		m := &security.Match{}
		switch w.Key {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.principal":
			m.Principals, m.NotPrincipals = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.ip":
			m.SourceIps, drop = addresses(w.Values, allow, false, w.Key, &bad, drop)
			m.NotSourceIps, drop = addresses(w.NotValues, allow, true, w.Key, &bad, drop)
		case "destination.ip":
			m.DestinationIps, drop = addresses(w.Values, allow, false, w.Key, &bad, drop)
			m.NotDestinationIps, drop = addresses(w.NotValues, allow, true, w.Key, &bad, drop)
		case "destination.port":
			m.DestinationPorts, drop = ports(w.Values, allow, false, w.Key, &bad, drop)
			m.NotDestinationPorts, drop = ports(w.NotValues, allow, true, w.Key, &bad, drop)
		}
		rules = append(rules, &security.Rules{Matches: []*security.Match{m}})
	}
	if allow && (len(l7) > 0 || drop) {
		// Istio: HTTP rules never match in an ALLOW policy.
		return nil, l7, bad
	}
	return rules, l7, bad
}

func present(fields map[string]int) []string {
	var out []string
	for f, n := range fields {
		if n > 0 {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// stringMatches reads Istio's value forms: "*" any, "*x" suffix, "x*"
// prefix, else exact.
func stringMatches(vs []string) []*security.StringMatch {
	out := make([]*security.StringMatch, 0, len(vs))
	for _, v := range vs {
		switch {
		case v == "*":
			out = append(out, presence())
		case strings.HasPrefix(v, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v[1:]}})
		case strings.HasSuffix(v, "*"):
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v[:len(v)-1]}})
		default:
			out = append(out, &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}})
		}
	}
	return out
}

// serviceAccounts reads "ns/sa", or "sa" in the policy's namespace.
func serviceAccounts(vs []string, ns string) []*security.ServiceAccountMatch {
	out := make([]*security.ServiceAccountMatch, 0, len(vs))
	for _, v := range vs {
		if n, sa, ok := strings.Cut(v, "/"); ok {
			out = append(out, &security.ServiceAccountMatch{Namespace: n, ServiceAccount: sa})
		} else {
			out = append(out, &security.ServiceAccountMatch{Namespace: ns, ServiceAccount: v})
		}
	}
	return out
}

// ports parses port values. Istio skips a value that does not parse; so
// does warden where that cannot widen access: in a DENY rule a bad value
// of a positive field empties the field (which then matches every port:
// it denies more), of a negated field it is left out (fewer exceptions).
// In an ALLOW rule any bad value leaves the rule out (drop).
func ports(vs []string, allow, negated bool, field string, bad *[]string, drop bool) ([]uint32, bool) {
	out := make([]uint32, 0, len(vs))
	failed := false
	for _, v := range vs {
		p, err := strconv.ParseUint(v, 10, 32)
		if err != nil || p > 65535 {
			*bad = append(*bad, fmt.Sprintf("%s %q is not a port number; %s", field, v, badConsequence(allow, negated)))
			failed = true
			continue
		}
		out = append(out, uint32(p))
	}
	if failed && !allow && !negated {
		out = nil
	}
	return out, drop || (failed && allow)
}

// addresses parses IPs and CIDRs as ports parses port numbers.
func addresses(vs []string, allow, negated bool, field string, bad *[]string, drop bool) ([]*security.Address, bool) {
	out := make([]*security.Address, 0, len(vs))
	failed := false
	for _, v := range vs {
		if v == "" {
			continue // Istio skips empty values
		}
		var pfx netip.Prefix
		var err error
		if strings.Contains(v, "/") {
			pfx, err = netip.ParsePrefix(v)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(v); err == nil {
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			*bad = append(*bad, fmt.Sprintf("%s %q is not an IP address or CIDR; %s", field, v, badConsequence(allow, negated)))
			failed = true
			continue
		}
		out = append(out, &security.Address{Address: pfx.Addr().AsSlice(), Length: uint32(pfx.Bits())})
	}
	if failed && !allow && !negated {
		out = nil
	}
	return out, drop || (failed && allow)
}

func badConsequence(allow, negated bool) string {
	switch {
	case allow:
		return "the rule is left out (it matches nothing)"
	case negated:
		return "the value is left out (the rule excepts less)"
	}
	return "the field is left out (the rule denies more)"
}

// mtls is a PeerAuthentication's top-level mode ("" when unset).
func mtls(p *api.PeerAuthentication) string {
	if p == nil || p.Spec.MTLS == nil || p.Spec.MTLS.Mode == "UNSET" {
		return ""
	}
	return p.Spec.MTLS.Mode
}

func portMode(m api.PeerMTLS) string {
	if m.Mode == "UNSET" {
		return ""
	}
	return m.Mode
}

// portLevel is a PeerAuthentication's port-level modes in port order.
func portLevel(p *api.PeerAuthentication) (ps []uint32, modes []string) {
	type pm struct {
		port uint32
		mode string
	}
	var l []pm
	for k, m := range p.Spec.PortLevelMTLS {
		n, err := strconv.ParseUint(k, 10, 32)
		if err != nil {
			continue // the decoder refuses it
		}
		l = append(l, pm{uint32(n), portMode(m)})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].port < l[j].port })
	for _, x := range l {
		ps, modes = append(ps, x.port), append(modes, x.mode)
	}
	return ps, modes
}

func oldestPA(l []*api.PeerAuthentication) *api.PeerAuthentication {
	var o *api.PeerAuthentication
	for _, p := range l {
		if o == nil || p.Metadata.Created().Before(o.Metadata.Created()) {
			o = p
		}
	}
	return o
}

// convertPeerAuthentication compiles a workload PeerAuthentication with
// port-level modes into the DENY policy ztunnel enforces, merging the
// STRICT of its namespace's or the mesh's policy where needed, as
// Istio's convertPeerAuthentication does; nil when the static STRICT
// policy (or nothing) says it all.
func convertPeerAuthentication(root string, cfg, nsCfg, rootCfg *api.PeerAuthentication) *authorization {
	if cfg.Metadata.Namespace == root || cfg.Spec.Selector == nil || len(cfg.Spec.PortLevelMTLS) == 0 {
		return nil
	}
	mode := mtls(cfg)
	var rules []*security.Rules
	var groups []*security.Group
	if mode == modeStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notAuthenticated(nil)}})
	}
	nonStrict := false
	ps, modes := portLevel(cfg)
	for i, port := range ps {
		switch modes[i] {
		case modeStrict:
			if mode == modeStrict || (mode == "" && nsCfg != nil && mtls(nsCfg) == modeStrict) ||
				((nsCfg == nil || mtls(nsCfg) == "") && rootCfg != nil && mtls(rootCfg) == modeStrict) {
				continue // the parent policy already enforces it
			}
			groups = append(groups, &security.Group{Rules: []*security.Rules{{Matches: []*security.Match{notAuthenticated([]uint32{port})}}}})
		case modePermissive, modeDisable:
			if mode == modePermissive || mode == modeDisable {
				continue
			}
			if mode == "" && ((nsCfg != nil && mtls(nsCfg) != modeStrict) || (nsCfg == nil && rootCfg != nil && mtls(rootCfg) != modeStrict) || (nsCfg == nil && rootCfg == nil)) {
				continue
			}
			nonStrict = true
			rules = append(rules, &security.Rules{Matches: []*security.Match{{NotDestinationPorts: []uint32{port}}}})
		}
	}
	if mode == modeStrict && !nonStrict {
		return nil
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil
	}
	merge := (rootCfg != nil && mtls(rootCfg) == modeStrict && (nsCfg == nil || mtls(nsCfg) == "" || mtls(nsCfg) == modeStrict)) ||
		(nsCfg != nil && mtls(nsCfg) == modeStrict)
	if merge && nonStrict {
		rules = append(rules, &security.Rules{Matches: []*security.Match{notAuthenticated(nil)}})
	}
	if len(rules) > 0 {
		groups = append(groups, &security.Group{Rules: rules})
	}
	return &authorization{
		auth: &security.Authorization{Name: convertedPAPrefix + cfg.Metadata.Name, Namespace: cfg.Metadata.Namespace,
			Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY, Groups: groups},
		selector: cfg.Spec.Selector.MatchLabels,
	}
}

// peerAuthKeys are the PeerAuthentication-derived policies a workload
// names: the static STRICT one when its effective mode is STRICT, and
// its own port-level policy when one applies (Istio's
// convertedSelectorPeerAuthentications).
func peerAuthKeys(root string, configs []*api.PeerAuthentication) []string {
	var meshCfg, nsCfg, wlCfg *api.PeerAuthentication
	older := func(a, b *api.PeerAuthentication) bool {
		return b == nil || a.Metadata.Created().Before(b.Metadata.Created())
	}
	for _, c := range configs {
		if c.Spec.Selector == nil || len(c.Spec.Selector.MatchLabels) == 0 {
			if c.Metadata.Namespace == root {
				if older(c, meshCfg) {
					meshCfg = c
				}
			} else if older(c, nsCfg) {
				nsCfg = c
			}
		} else if c.Metadata.Namespace != root && older(c, wlCfg) {
			wlCfg = c
		}
	}
	strict := false
	if meshCfg != nil {
		strict = mtls(meshCfg) == modeStrict
	}
	if nsCfg != nil && mtls(nsCfg) != "" {
		strict = mtls(nsCfg) == modeStrict
	}
	own := ""
	if wlCfg != nil {
		key := wlCfg.Metadata.Namespace + "/" + convertedPAPrefix + wlCfg.Metadata.Name
		switch mtls(wlCfg) {
		case modeStrict:
			strict = true
		case modePermissive, modeDisable:
			strict = false
		}
		if len(wlCfg.Spec.PortLevelMTLS) > 0 {
			_, modes := portLevel(wlCfg)
			switch mtls(wlCfg) {
			case modeStrict:
				if slices.Contains(modes, modePermissive) || slices.Contains(modes, modeDisable) {
					own, strict = key, false
				}
			case modePermissive, modeDisable:
				if slices.Contains(modes, modeStrict) {
					own = key
				}
			default:
				if strict {
					if slices.Contains(modes, modePermissive) {
						own, strict = key, false
					}
				} else if slices.Contains(modes, modeStrict) {
					own = key
				}
			}
		}
	}
	var keys []string
	if strict {
		keys = append(keys, root+"/"+StaticStrictName)
	}
	if own != "" {
		keys = append(keys, own)
	}
	sort.Strings(keys)
	return keys
}
