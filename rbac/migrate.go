package rbac

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/wardenmesh/warden/api"
)

// Migrate converts legacy RBAC (ServiceRole, ServiceRoleBinding, gated by
// ClusterRbacConfig/RbacConfig) into AuthorizationPolicies with the same
// decisions, and lists what it could not express. ServiceRole services
// other than "*" need serviceLabels (Service FQDN -> the labels its
// selector uses) to become a workload selector.
func Migrate(objs []api.Object, serviceLabels map[string]map[string]string) ([]*api.AuthorizationPolicy, []string) {
	var notes []string
	nss := map[string]bool{}
	roles := map[string]*api.ServiceRole{}
	var bindings []*api.ServiceRoleBinding
	for _, o := range objs {
		switch x := o.(type) {
		case *api.ServiceRole:
			roles[x.Metadata.Namespace+"/"+x.Metadata.Name] = x
			nss[x.Metadata.Namespace] = true
		case *api.ServiceRoleBinding:
			bindings = append(bindings, x)
			nss[x.Metadata.Namespace] = true
		}
	}
	sort.Slice(bindings, func(i, j int) bool {
		a, b := bindings[i].Metadata, bindings[j].Metadata
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	var out []*api.AuthorizationPolicy
	names := make([]string, 0, len(nss))
	for ns := range nss {
		names = append(names, ns)
	}
	sort.Strings(names)
	for _, ns := range names {
		on, dry, _ := rbacOn(objs, Workload{Namespace: ns})
		if !on {
			notes = append(notes, fmt.Sprintf("namespace %s: RBAC is not on for the namespace as a whole; no policies emitted (service-level inclusion/exclusion needs per-service selectors)", ns))
			continue
		}
		meta := func(name string) api.ObjectMeta {
			m := api.ObjectMeta{Name: name, Namespace: ns}
			if dry {
				m.Annotations = map[string]string{"istio.io/dry-run": "true"}
			}
			return m
		}
		// RBAC on: requests no binding allows are denied.
		out = append(out, &api.AuthorizationPolicy{TypeMeta: api.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"}, Metadata: meta("rbac-on"), Spec: api.AuthorizationPolicySpec{Action: "ALLOW"}})
		for _, b := range bindings {
			if b.Metadata.Namespace != ns {
				continue
			}
			roleName := b.Spec.Role
			if b.Spec.RoleRef != nil {
				roleName = b.Spec.RoleRef.Name
			}
			role, ok := roles[ns+"/"+roleName]
			if !ok {
				notes = append(notes, fmt.Sprintf("ServiceRoleBinding %s/%s: ServiceRole %q not found; skipped", ns, b.Metadata.Name, roleName))
				continue
			}
			var froms []api.RuleFrom
			var whens []api.Condition
			expressible := true
			for i, s := range b.Spec.Subjects {
				if s.Group != "" || len(s.Groups) > 0 {
					notes = append(notes, fmt.Sprintf("ServiceRoleBinding %s/%s subjects[%d]: groups cannot be expressed; binding skipped", ns, b.Metadata.Name, i))
					expressible = false
				}
				src := &api.Source{}
				if s.User != "" {
					src.Principals = []string{s.User}
				}
				for k, v := range s.Properties {
					whens = append(whens, api.Condition{Key: k, Values: []string{v}})
				}
				froms = append(froms, api.RuleFrom{Source: src})
			}
			if !expressible {
				continue
			}
			for i, r := range role.Spec.Rules {
				sel, ok := selectorFor(r.Services, serviceLabels)
				if !ok {
					notes = append(notes, fmt.Sprintf("ServiceRole %s/%s rule %d: services %v have no labels given; skipped", ns, roleName, i, r.Services))
					continue
				}
				op := &api.Operation{Methods: r.Methods, NotMethods: r.NotMethods, Paths: r.Paths, NotPaths: r.NotPaths}
				for _, p := range r.Ports {
					op.Ports = append(op.Ports, strconv.Itoa(int(p)))
				}
				for _, p := range r.NotPorts {
					op.NotPorts = append(op.NotPorts, strconv.Itoa(int(p)))
				}
				if len(op.Methods) == 1 && op.Methods[0] == "*" {
					op.Methods = nil
				}
				rule := api.Rule{From: froms, To: []api.RuleTo{{Operation: op}}, When: whens}
				for _, c := range r.Constraints {
					rule.When = append(rule.When, api.Condition{Key: c.Key, Values: c.Values})
				}
				out = append(out, &api.AuthorizationPolicy{
					TypeMeta: api.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"},
					Metadata: meta(fmt.Sprintf("%s-%d", b.Metadata.Name, i)),
					Spec:     api.AuthorizationPolicySpec{Action: "ALLOW", Selector: sel, Rules: []api.Rule{rule}},
				})
			}
		}
	}
	return out, notes
}

func selectorFor(services []string, labels map[string]map[string]string) (*api.WorkloadSelector, bool) {
	if len(services) == 0 || (len(services) == 1 && services[0] == "*") {
		return nil, true
	}
	if len(services) == 1 {
		if l, ok := labels[services[0]]; ok {
			return &api.WorkloadSelector{MatchLabels: l}, true
		}
	}
	return nil, false
}
