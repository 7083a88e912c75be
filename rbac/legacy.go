package rbac

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/wardenmesh/warden/api"
)

// rbacOn reports whether legacy RBAC applies to w, and whether it only
// logs (enforcementMode PERMISSIVE).
func rbacOn(objs []api.Object, w Workload) (on, dry bool, source string) {
	spec, source := rbacConfig(objs)
	if spec == nil {
		return false, false, ""
	}
	in := func(t *api.RbacTarget) bool {
		if t == nil {
			return false
		}
		if slices.Contains(t.Namespaces, w.Namespace) {
			return true
		}
		return servesAny(w, t.Services)
	}
	switch spec.Mode {
	case "ON":
		on = true
	case "ON_WITH_INCLUSION":
		on = in(spec.Inclusion)
	case "ON_WITH_EXCLUSION":
		on = !in(spec.Exclusion)
	}
	return on, spec.EnforcementMode == "PERMISSIVE", source
}

// rbacConfig is the ClusterRbacConfig (or, failing that, RbacConfig)
// named default.
func rbacConfig(objs []api.Object) (spec *api.RbacConfigSpec, source string) {
	for _, o := range objs {
		switch x := o.(type) {
		case *api.ClusterRbacConfig:
			if x.Metadata.Name == "default" {
				spec, source = &x.Spec, "ClusterRbacConfig default"
			}
		case *api.RbacConfig:
			if x.Metadata.Name == "default" && spec == nil {
				spec, source = &x.Spec, "RbacConfig default"
			}
		}
	}
	return spec, source
}

// ignoredTargets reports an inclusion or exclusion list the mode does not
// read.
func ignoredTargets(spec *api.RbacConfigSpec, source string) []string {
	var out []string
	if spec.Inclusion != nil && spec.Mode != "ON_WITH_INCLUSION" {
		out = append(out, fmt.Sprintf("%s: inclusion is read only in mode ON_WITH_INCLUSION; ignored in mode %s", source, spec.Mode))
	}
	if spec.Exclusion != nil && spec.Mode != "ON_WITH_EXCLUSION" {
		out = append(out, fmt.Sprintf("%s: exclusion is read only in mode ON_WITH_EXCLUSION; ignored in mode %s", source, spec.Mode))
	}
	return out
}

// servesAny reports whether a Service of w (by FQDN) matches one of the
// patterns: a ClusterRbacConfig target's or a ServiceRole rule's services.
func servesAny(w Workload, patterns []string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool {
		return slices.ContainsFunc(w.ServiceFQDNs, func(s string) bool { return serviceMatch(p, s) })
	})
}

func serviceMatch(pattern, svc string) bool {
	switch {
	case pattern == "*":
		return true
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(svc, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(svc, strings.TrimPrefix(pattern, "*"))
	}
	return pattern == svc
}

// compileLegacy maps ServiceRoleBindings (and their ServiceRoles) in w's
// namespace onto ALLOW policies, one per binding and role rule: the same
// decisions as Istio 1.4's one policy per role (its bindings' subjects
// ORed, its rules ORed), with names that say which binding allowed.
func compileLegacy(objs []api.Object, w Workload, opts Options, reports *[]string) []compiled {
	if spec, source := rbacConfig(objs); spec != nil {
		*reports = append(*reports, ignoredTargets(spec, source)...)
	}
	on, dry, _ := rbacOn(objs, w)
	if !on {
		return nil
	}
	roles := map[string]*api.ServiceRole{}
	var bindings []*api.ServiceRoleBinding
	for _, o := range objs {
		switch x := o.(type) {
		case *api.ServiceRole:
			if x.Metadata.Namespace == w.Namespace {
				roles[x.Metadata.Name] = x
			}
		case *api.ServiceRoleBinding:
			if x.Metadata.Namespace == w.Namespace {
				bindings = append(bindings, x)
			}
		}
	}
	sort.Slice(bindings, func(i, j int) bool { return bindings[i].Metadata.Name < bindings[j].Metadata.Name })
	out := []compiled{{name: PolicyName(w.Namespace, "rbac-on", 0), action: "ALLOW", dryRun: dry}} // RBAC on: unmatched requests are denied
	for _, b := range bindings {
		where := fmt.Sprintf("ServiceRoleBinding %s/%s", w.Namespace, b.Metadata.Name)
		bd := builder{opts: opts, reports: reports, where: where}
		// Istio 1.4 reads the role from roleRef only; role and inline
		// actions were never enforced, so a binding relying on them
		// grants nothing.
		if b.Spec.RoleRef == nil || b.Spec.RoleRef.Name == "" {
			bd.report("roleRef.name is required (Istio ignores role and actions); binding ignored")
			continue
		}
		if b.Spec.Role != "" || len(b.Spec.Actions) > 0 {
			bd.report("role and actions are not read (Istio ignores them); roleRef %q applies", b.Spec.RoleRef.Name)
		}
		roleName := b.Spec.RoleRef.Name
		role, ok := roles[roleName]
		if !ok {
			bd.report("ServiceRole %q not found; binding ignored", roleName)
			continue
		}
		principals, err := bd.subjects(b.Spec.Subjects)
		if err != nil {
			bd.report("%v; binding dropped", err)
			continue
		}
		for i, r := range role.Spec.Rules {
			if len(r.Services) > 0 && !servesAny(w, r.Services) {
				continue
			}
			perm, err := bd.accessRule(r, w)
			if err != nil {
				bd.report("ServiceRole %s rule %d: %v; rule dropped", roleName, i, err)
				continue
			}
			out = append(out, compiled{name: PolicyName(w.Namespace, b.Metadata.Name, i), action: "ALLOW", dryRun: dry || b.Spec.Mode == "PERMISSIVE",
				policy: &rbacv3.Policy{Principals: principals, Permissions: []*rbacv3.Permission{perm}}})
		}
	}
	return out
}

// legacyUser is a subject's user: "*" and "allUsers" are anyone,
// "allAuthenticatedUsers" any mTLS peer, else a principal.
func legacyUser(v string) (*rbacv3.Principal, error) {
	switch v {
	case "*", "allUsers":
		return anyPrincipal, nil
	case "allAuthenticatedUsers":
		return principal("*")
	}
	return principal(v)
}

// legacyNamespace is Istio 1.4's namespace match: * is any run.
func legacyNamespace(v string) (*rbacv3.Principal, error) { return namespacePrincipal(v) }

// subjects ORs the binding's subjects; each subject ANDs its fields, and a
// subject with no fields matches nobody (Istio 1.4).
func (b builder) subjects(subs []api.Subject) ([]*rbacv3.Principal, error) {
	var ors []*rbacv3.Principal
	for i, s := range subs {
		var users []string
		if s.User != "" {
			users = b.opts.principalSet([]string{s.User})
		}
		groups := s.Groups
		if s.Group != "" {
			groups = append([]string{s.Group}, groups...)
		}
		var pfs []principalField
		if len(users) > 0 {
			pfs = append(pfs, principalField{"user", users, nil, false, legacyUser})
		}
		pfs = append(pfs,
			principalField{"names", s.Names, s.NotNames, false, legacyUser},
			principalField{"groups", groups, s.NotGroups, true, claimValue([]string{"groups"})},
			principalField{"namespaces", s.Namespaces, s.NotNamespaces, false, legacyNamespace},
			principalField{"ips", s.IPs, s.NotIPs, false, ipPrincipal(false)},
		)
		keys := make([]string, 0, len(s.Properties))
		for k := range s.Properties {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			pf, _, err := b.condition(fmt.Sprintf("subjects[%d].properties", i), api.Condition{Key: k, Values: []string{s.Properties[k]}}, "")
			if err != nil || pf == nil {
				return nil, unsupported{fmt.Sprintf("subjects[%d].properties[%s] is not a source property warden compiles", i, k)}
			}
			pfs = append(pfs, *pf)
		}
		sb := b
		sb.where = fmt.Sprintf("%s subjects[%d]", b.where, i)
		ps, err := compileFields(sb, pfs, true, orIDs, notID)
		if err != nil {
			return nil, err
		}
		if len(ps) == 0 {
			ors = append(ors, notID(anyPrincipal))
			continue
		}
		ors = append(ors, andIDs(ps))
	}
	if len(ors) == 0 {
		return nil, unsupported{"no subjects"}
	}
	return []*rbacv3.Principal{orIDs(ors)}, nil
}

// accessRule compiles a ServiceRole rule as Istio 1.4 does: hosts,
// methods and paths match the :authority, :method and :path headers (the
// path with its query); constraints on destination labels, name and
// namespace are decided here, against the workload.
func (b builder) accessRule(r api.AccessRule, w Workload) (*rbacv3.Permission, error) {
	ports := func(ps []int32) []string {
		var out []string
		for _, p := range ps {
			out = append(out, strconv.Itoa(int(p)))
		}
		return out
	}
	qfs := []permissionField{
		{"hosts", r.Hosts, r.NotHosts, true, headerPermission(":authority", false)},
		{"methods", r.Methods, r.NotMethods, true, headerPermission(":method", false)},
		{"paths", r.Paths, r.NotPaths, true, headerPermission(":path", false)},
		{"ports", ports(r.Ports), ports(r.NotPorts), false, portPermission},
	}
	for _, c := range r.Constraints {
		switch key := c.Key; {
		case key == "destination.namespace":
			if !slices.ContainsFunc(c.Values, func(v string) bool { return serviceMatch(v, w.Namespace) }) {
				return nil, unsupported{fmt.Sprintf("constraint %s %v does not match namespace %s", key, c.Values, w.Namespace)}
			}
			continue
		case strings.HasPrefix(key, "destination.labels"):
			l, ok := bracketed(strings.TrimPrefix(key, "destination.labels"))
			v, has := w.Labels[l]
			if !ok || !has || !slices.ContainsFunc(c.Values, func(p string) bool { return serviceMatch(p, v) }) {
				return nil, unsupported{fmt.Sprintf("constraint %s %v does not match the workload's labels", key, c.Values)}
			}
			continue
		case key == "destination.name":
			if !slices.ContainsFunc(w.ServiceFQDNs, func(s string) bool {
				short, _, _ := strings.Cut(s, ".")
				return slices.ContainsFunc(c.Values, func(p string) bool { return serviceMatch(p, short) })
			}) {
				return nil, unsupported{fmt.Sprintf("constraint %s %v does not match the workload's services", key, c.Values)}
			}
			continue
		}
		key := c.Key
		if h, ok := bracketed(strings.TrimPrefix(key, "request.headers")); ok && strings.HasPrefix(key, "request.headers") {
			qfs = append(qfs, permissionField{"constraints." + key, c.Values, nil, true, headerPermission(strings.ToLower(h), false)})
			continue
		}
		_, qf, err := b.condition("constraints", api.Condition{Key: key, Values: c.Values}, "")
		if err != nil || qf == nil {
			return nil, unsupported{fmt.Sprintf("constraint %q is not a destination property warden compiles", key)}
		}
		qfs = append(qfs, *qf)
	}
	qs, err := compileFields(b, qfs, true, orRules, notRule)
	if err != nil {
		return nil, err
	}
	return andRules(qs), nil
}
