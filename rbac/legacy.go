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
	var spec *api.RbacConfigSpec
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
		for _, s := range t.Services {
			if slices.ContainsFunc(w.Services, func(x string) bool { return serviceMatch(s, x) }) {
				return true
			}
		}
		return false
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
// namespace onto ALLOW policies, one per binding and role rule.
func compileLegacy(objs []api.Object, w Workload, opts Options, reports *[]string) []compiled {
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
		roleName := b.Spec.Role
		if b.Spec.RoleRef != nil {
			roleName = b.Spec.RoleRef.Name
		}
		role, ok := roles[roleName]
		where := fmt.Sprintf("ServiceRoleBinding %s/%s", w.Namespace, b.Metadata.Name)
		if !ok {
			*reports = append(*reports, fmt.Sprintf("%s: ServiceRole %q not found; binding ignored", where, roleName))
			continue
		}
		bd := builder{opts: opts, reports: reports, where: where}
		principals, err := bd.subjects(b.Spec.Subjects)
		if err != nil {
			bd.report("%v; binding dropped", err)
			continue
		}
		for i, r := range role.Spec.Rules {
			if len(r.Services) > 0 && !slices.ContainsFunc(r.Services, func(s string) bool {
				return slices.ContainsFunc(w.Services, func(x string) bool { return serviceMatch(s, x) })
			}) {
				continue
			}
			perm, err := bd.accessRule(r)
			if err != nil {
				bd.report("ServiceRole %s rule %d: %v; rule dropped", roleName, i, err)
				continue
			}
			out = append(out, compiled{name: PolicyName(w.Namespace, b.Metadata.Name, i), action: "ALLOW", dryRun: dry,
				policy: &rbacv3.Policy{Principals: principals, Permissions: perm}})
		}
	}
	return out
}

// subjects ORs the binding's subjects; each subject ANDs its fields.
func (b builder) subjects(subs []api.Subject) ([]*rbacv3.Principal, error) {
	var ors []*rbacv3.Principal
	for i, s := range subs {
		var pfs []principalField
		if s.User != "" {
			pfs = append(pfs, principalField{"user", []string{s.User}, false, false, func(v string) (*rbacv3.Principal, error) {
				if v == "*" {
					return anyPrincipal, nil
				}
				return principal(v), nil
			}})
		}
		if s.Group != "" || len(s.Groups) > 0 {
			return nil, unsupported{fmt.Sprintf("subjects[%d]: groups are not supported (warden has no group source)", i)}
		}
		keys := make([]string, 0, len(s.Properties))
		for k := range s.Properties {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			pf, _, err := condition(fmt.Sprintf("subjects[%d].properties", i), api.Condition{Key: k, Values: []string{s.Properties[k]}})
			if err != nil || pf == nil {
				return nil, unsupported{fmt.Sprintf("subjects[%d].properties[%s] is not a source property", i, k)}
			}
			pfs = append(pfs, *pf)
		}
		ps, _, err := b.sides(pfs, nil, true)
		if err != nil {
			return nil, err
		}
		ors = append(ors, andIDs(ps)...)
	}
	if len(ors) == 0 {
		return nil, unsupported{"no subjects"}
	}
	return []*rbacv3.Principal{orIDs(ors)}, nil
}

func (b builder) accessRule(r api.AccessRule) ([]*rbacv3.Permission, error) {
	ports := func(ps []int32) []string {
		var out []string
		for _, p := range ps {
			out = append(out, strconv.Itoa(int(p)))
		}
		return out
	}
	qfs := []permissionField{
		{"methods", r.Methods, false, true, headerPermission(":method", false)},
		{"notMethods", r.NotMethods, true, true, headerPermission(":method", false)},
		{"paths", r.Paths, false, true, pathPermission},
		{"notPaths", r.NotPaths, true, true, pathPermission},
		{"ports", ports(r.Ports), false, false, portPermission},
		{"notPorts", ports(r.NotPorts), true, false, portPermission},
	}
	if slices.Contains(r.Methods, "*") {
		qfs[0].values = nil // every method
	}
	for _, c := range r.Constraints {
		_, qf, err := condition("constraints", api.Condition{Key: c.Key, Values: c.Values})
		if err != nil || qf == nil {
			return nil, unsupported{fmt.Sprintf("constraint %q is not a destination property", c.Key)}
		}
		qfs = append(qfs, *qf)
	}
	_, qs, err := b.sides(nil, qfs, true)
	if err != nil {
		return nil, err
	}
	return andRules(qs), nil
}
