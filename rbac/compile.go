package rbac

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/wardenmesh/warden/api"
)

// compiled is one RBAC policy before it is put in a filter.
type compiled struct {
	name     string
	action   string // ALLOW, DENY, AUDIT, CUSTOM
	provider string
	dryRun   bool
	policy   *rbacv3.Policy // nil when the rule was dropped
}

type builder struct {
	opts    Options
	reports *[]string
	where   string
}

func (b builder) report(format string, args ...any) {
	*b.reports = append(*b.reports, b.where+": "+fmt.Sprintf(format, args...))
}

// field is one key of a rule: values ORed, notValues ORed and negated,
// both ANDed when both are set; each value compiled to T (a principal or
// a permission) by mk.
type field[T any] struct {
	name              string
	values, notValues []string
	http              bool // meaningless on a TCP port
	mk                func(string) (T, error)
}

type principalField = field[*rbacv3.Principal]
type permissionField = field[*rbacv3.Permission]

// compileFields compiles fields into matchers to be ANDed. As in Istio,
// an inexpressible value fails the whole rule when strict (ALLOW: the rule
// is dropped, access narrows); otherwise (DENY, AUDIT) the value is left
// out, or the whole field for an HTTP-only field on TCP, so the rule
// matches more. Both are reported.
func compileFields[T any](b builder, fs []field[T], strict bool, or func([]T) T, not func(T) T) ([]T, error) {
	var out []T
	for _, f := range fs {
		if len(f.values)+len(f.notValues) == 0 {
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
		for _, vs := range []struct {
			values  []string
			negated bool
		}{{f.values, false}, {f.notValues, true}} {
			var ms []T
			for _, v := range vs.values {
				m, err := f.mk(v)
				if err != nil {
					if strict {
						return nil, fmt.Errorf("%s: %w", f.name, err)
					}
					b.report("%s: %v; value ignored", f.name, err)
					continue
				}
				ms = append(ms, m)
			}
			if len(ms) == 0 {
				continue
			}
			m := or(ms)
			if vs.negated {
				m = not(m)
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// sourceFields are a `from` entry's fields.
func (b builder) sourceFields(s *api.Source, policyNS string) []principalField {
	td := b.opts.trustDomains()
	sa := serviceAccountPrincipal(policyNS)
	return []principalField{
		{"source.principals", b.opts.principalSet(s.Principals), b.opts.principalSet(s.NotPrincipals), false, principal},
		{"source.requestPrincipals", s.RequestPrincipals, s.NotRequestPrincipals, true, requestPrincipal},
		{"source.namespaces", s.Namespaces, s.NotNamespaces, false, namespacePrincipal},
		{"source.serviceAccounts", s.ServiceAccounts, s.NotServiceAccounts, false, sa},
		{"source.trustDomains", td.domains(s.TrustDomains), td.domains(s.NotTrustDomains), false, trustDomainPrincipal},
		{"source.ipBlocks", s.IPBlocks, s.NotIPBlocks, false, ipPrincipal(false)},
		{"source.remoteIpBlocks", s.RemoteIPBlocks, s.NotRemoteIPBlocks, false, ipPrincipal(true)},
	}
}

func operationFields(o *api.Operation) []permissionField {
	return []permissionField{
		{"operation.hosts", o.Hosts, o.NotHosts, true, headerPermission(":authority", true)},
		{"operation.ports", o.Ports, o.NotPorts, false, portPermission},
		{"operation.methods", o.Methods, o.NotMethods, true, headerPermission(":method", false)},
		{"operation.paths", o.Paths, o.NotPaths, true, pathPermission},
	}
}

// rule compiles one AuthorizationPolicy rule as Istio does: each `from`
// entry is one principal (its fields ANDed) and the entries are ORed;
// likewise each `to` entry is one permission; `when` conditions are ANDed
// into every entry of the side they describe.
func (b builder) rule(r api.Rule, policyNS string, strict bool) (*rbacv3.Policy, error) {
	var basePF []principalField
	var baseQF []permissionField
	for i, c := range r.When {
		pf, qf, err := b.condition(fmt.Sprintf("when[%d]", i), c, policyNS)
		if err != nil {
			if strict {
				return nil, err
			}
			b.report("%v; condition ignored", err)
			continue
		}
		if pf != nil {
			basePF = append(basePF, *pf)
		}
		if qf != nil {
			baseQF = append(baseQF, *qf)
		}
	}
	baseP, err := compileFields(b, basePF, strict, orIDs, notID)
	if err != nil {
		return nil, err
	}
	baseQ, err := compileFields(b, baseQF, strict, orRules, notRule)
	if err != nil {
		return nil, err
	}
	var ps []*rbacv3.Principal
	for i, f := range r.From {
		var own []*rbacv3.Principal
		if f.Source != nil {
			fb := b
			if len(r.From) > 1 {
				fb.where = fmt.Sprintf("%s from[%d]", b.where, i)
			}
			if own, err = compileFields(fb, b.sourceFields(f.Source, policyNS), strict, orIDs, notID); err != nil {
				return nil, err
			}
		}
		ps = append(ps, andIDs(append(own, baseP...)))
	}
	if len(r.From) == 0 {
		ps = []*rbacv3.Principal{andIDs(baseP)}
	}
	var qs []*rbacv3.Permission
	for i, t := range r.To {
		var own []*rbacv3.Permission
		if t.Operation != nil {
			tb := b
			if len(r.To) > 1 {
				tb.where = fmt.Sprintf("%s to[%d]", b.where, i)
			}
			if own, err = compileFields(tb, operationFields(t.Operation), strict, orRules, notRule); err != nil {
				return nil, err
			}
		}
		qs = append(qs, andRules(append(own, baseQ...)))
	}
	if len(r.To) == 0 {
		qs = []*rbacv3.Permission{andRules(baseQ)}
	}
	return &rbacv3.Policy{Principals: ps, Permissions: qs}, nil
}

// condition compiles a `when` key onto the side Istio puts it on.
func (b builder) condition(where string, c api.Condition, policyNS string) (*principalField, *permissionField, error) {
	if len(c.Values)+len(c.NotValues) == 0 {
		return nil, nil, unsupported{fmt.Sprintf("%s: %s has neither values nor notValues", where, c.Key)}
	}
	name := where + "." + c.Key
	td := b.opts.trustDomains()
	p := func(http bool, mk func(string) (*rbacv3.Principal, error)) (*principalField, *permissionField, error) {
		return &principalField{name, c.Values, c.NotValues, http, mk}, nil, nil
	}
	q := func(mk func(string) (*rbacv3.Permission, error)) (*principalField, *permissionField, error) {
		return nil, &permissionField{name, c.Values, c.NotValues, false, mk}, nil
	}
	switch key := c.Key; {
	case strings.HasPrefix(key, "request.headers"):
		h, ok := bracketed(strings.TrimPrefix(key, "request.headers"))
		if !ok {
			return nil, nil, unsupported{fmt.Sprintf("%s: %q is not request.headers[<name>]", where, key)}
		}
		return p(true, headerPrincipal(strings.ToLower(h)))
	case key == "source.ip":
		return p(false, ipPrincipal(false))
	case key == "remote.ip":
		return p(false, ipPrincipal(true))
	case key == "source.namespace":
		return p(false, namespacePrincipal)
	case key == "source.principal":
		return &principalField{name, b.opts.principalSet(c.Values), b.opts.principalSet(c.NotValues), false, principal}, nil, nil
	case key == "source.serviceAccount":
		return p(false, serviceAccountPrincipal(policyNS))
	case key == "source.trustDomain":
		return &principalField{name, td.domains(c.Values), td.domains(c.NotValues), false, trustDomainPrincipal}, nil, nil
	case key == "request.auth.principal":
		return p(true, requestPrincipal)
	case key == "request.auth.audiences":
		return p(true, claimValue([]string{"aud"}))
	case key == "request.auth.presenter":
		return p(true, claimValue([]string{"azp"}))
	case strings.HasPrefix(key, "request.auth.claims"):
		claims, err := claimNames(strings.TrimPrefix(key, "request.auth.claims"))
		if err != nil {
			return nil, nil, unsupported{fmt.Sprintf("%s: %v", where, err)}
		}
		return p(true, claimValue(claims))
	case key == "destination.ip":
		return q(destIPPermission)
	case key == "destination.port":
		return q(portPermission)
	case key == "connection.sni":
		return q(sniPermission)
	case strings.HasPrefix(key, "experimental.envoy.filters."):
		return nil, nil, unsupported{fmt.Sprintf("%s: %q reads another filter's metadata, which warden does not compile", where, key)}
	}
	return nil, nil, unsupported{fmt.Sprintf("%s: unknown key %q", where, c.Key)}
}

func bracketed(s string) (string, bool) {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return "", false
	}
	return s[1 : len(s)-1], true
}

// selected lists the AuthorizationPolicies that apply to w, sorted by
// namespace (root first) and name. As in Istio, a policy in the root
// namespace applies to every workload without a selector, and to the
// workloads its selector matches in every namespace.
func selected(objs []*api.AuthorizationPolicy, w Workload, opts Options) []*api.AuthorizationPolicy {
	var out []*api.AuthorizationPolicy
	for _, p := range objs {
		if p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0 {
			continue // gateway/waypoint attachment: not a sidecar's
		}
		ns := p.Metadata.Namespace
		if ns != opts.RootNamespace && ns != w.Namespace {
			continue
		}
		if p.Spec.Selector != nil && len(p.Spec.Selector.MatchLabels) > 0 && !matches(p.Spec.Selector.MatchLabels, w.Labels) {
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
	dry := dryRun(p, reports)
	provider := ""
	if p.Spec.Provider != nil {
		provider = p.Spec.Provider.Name
	}
	if action == "CUSTOM" && provider == "" {
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s/%s: CUSTOM needs provider.name; policy ignored", p.Metadata.Namespace, p.Metadata.Name))
		return nil
	}
	if action != "CUSTOM" && provider != "" {
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s/%s: provider.name is read only with action CUSTOM; ignored", p.Metadata.Namespace, p.Metadata.Name))
	}
	var out []compiled
	for i, r := range p.Spec.Rules {
		name := PolicyName(p.Metadata.Namespace, p.Metadata.Name, i)
		b := builder{opts: opts, reports: reports, where: "AuthorizationPolicy " + p.Metadata.Namespace + "/" + p.Metadata.Name + " rule " + strconv.Itoa(i)}
		pol, err := b.rule(r, p.Metadata.Namespace, action == "ALLOW")
		if err != nil {
			b.report("%v; rule dropped (ALLOW is narrowed, never widened)", err)
		}
		*reports = append(*reports, lintRule(b.where, r)...)
		out = append(out, compiled{name: name, action: action, provider: provider, dryRun: dry, policy: pol})
	}
	if len(p.Spec.Rules) == 0 && action == "ALLOW" {
		// An ALLOW policy without rules matches nothing: it denies all.
		out = append(out, compiled{name: PolicyName(p.Metadata.Namespace, p.Metadata.Name, 0), action: action, dryRun: dry})
	}
	return out
}

// dryRun reads the istio.io/dry-run annotation as Istio does
// (model.isDryRunPolicy: strconv.ParseBool, so "1", "t", "TRUE" are
// dry-run, and a value it cannot parse, "tRuE" or "yes", is not: the
// policy is enforced, and reported).
func dryRun(p *api.AuthorizationPolicy, reports *[]string) bool {
	v, ok := p.Metadata.Annotations["istio.io/dry-run"]
	if !ok {
		return false
	}
	dry, err := strconv.ParseBool(v)
	if err != nil {
		*reports = append(*reports, fmt.Sprintf("AuthorizationPolicy %s/%s: istio.io/dry-run %q is not a boolean (true, false, 1, 0, t, f, TRUE, FALSE...); the policy is enforced, as in Istio", p.Metadata.Namespace, p.Metadata.Name, v))
		return false
	}
	return dry
}
