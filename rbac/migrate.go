package rbac

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

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
			where := fmt.Sprintf("ServiceRoleBinding %s/%s", ns, b.Metadata.Name)
			if b.Spec.RoleRef == nil || b.Spec.RoleRef.Name == "" {
				notes = append(notes, where+": roleRef.name is required (Istio ignores role and actions); skipped")
				continue
			}
			roleName := b.Spec.RoleRef.Name
			role, ok := roles[ns+"/"+roleName]
			if !ok {
				notes = append(notes, fmt.Sprintf("%s: ServiceRole %q not found; skipped", where, roleName))
				continue
			}
			var subjects []api.Rule // one rule per subject: subjects are ORed, a subject's fields ANDed
			for i, s := range b.Spec.Subjects {
				r, ok := migrateSubject(s)
				if !ok {
					notes = append(notes, fmt.Sprintf("%s subjects[%d]: a subject with no fields matches nobody; left out", where, i))
					continue
				}
				subjects = append(subjects, r)
			}
			if len(subjects) == 0 {
				continue
			}
			for i, r := range role.Spec.Rules {
				sel, ok := selectorFor(r.Services, serviceLabels)
				if !ok {
					notes = append(notes, fmt.Sprintf("ServiceRole %s/%s rule %d: services %v have no labels given; skipped", ns, roleName, i, r.Services))
					continue
				}
				op, whens, ok := migrateAccessRule(r)
				if !ok {
					notes = append(notes, fmt.Sprintf("ServiceRole %s/%s rule %d: constraints on destination labels, name or namespace cannot be converted; skipped", ns, roleName, i))
					continue
				}
				if len(r.Paths)+len(r.NotPaths) > 0 {
					notes = append(notes, fmt.Sprintf("ServiceRole %s/%s rule %d: paths are now matched without the query string", ns, roleName, i))
				}
				var rules []api.Rule
				for _, sr := range subjects {
					rule := api.Rule{From: sr.From, When: append(append([]api.Condition{}, sr.When...), whens...)}
					if op != nil {
						rule.To = []api.RuleTo{{Operation: op}}
					}
					rules = append(rules, rule)
				}
				m := meta(fmt.Sprintf("%s-%d", b.Metadata.Name, i))
				if b.Spec.Mode == "PERMISSIVE" {
					m.Annotations = map[string]string{"istio.io/dry-run": "true"}
				}
				out = append(out, &api.AuthorizationPolicy{
					TypeMeta: api.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"},
					Metadata: m,
					Spec:     api.AuthorizationPolicySpec{Action: "ALLOW", Selector: sel, Rules: rules},
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

// migrateSubject turns one legacy subject into a rule's from and when
// (the caller adds the operation). ok is false for a subject that matches
// nobody.
func migrateSubject(s api.Subject) (api.Rule, bool) {
	var r api.Rule
	src := &api.Source{Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces, IPBlocks: s.IPs, NotIPBlocks: s.NotIPs}
	anyone := false
	switch s.User {
	case "":
	case "*", "allUsers":
		anyone = true
	case "allAuthenticatedUsers":
		src.Principals = []string{"*"}
	default:
		src.Principals = []string{s.User}
	}
	if len(s.Names) > 0 {
		if src.Principals == nil {
			src.Principals = s.Names
		} else {
			r.When = append(r.When, api.Condition{Key: "source.principal", Values: s.Names})
		}
	}
	src.NotPrincipals = s.NotNames
	groups := s.Groups
	if s.Group != "" {
		groups = append([]string{s.Group}, groups...)
	}
	if len(groups)+len(s.NotGroups) > 0 {
		r.When = append(r.When, api.Condition{Key: "request.auth.claims[groups]", Values: groups, NotValues: s.NotGroups})
	}
	keys := make([]string, 0, len(s.Properties))
	for k := range s.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r.When = append(r.When, api.Condition{Key: k, Values: []string{s.Properties[k]}})
	}
	empty := api.Source{}
	if !reflect.DeepEqual(*src, empty) {
		r.From = []api.RuleFrom{{Source: src}}
	} else if !anyone && len(r.When) == 0 {
		return r, false
	}
	return r, true
}

// migrateAccessRule turns a ServiceRole rule into an operation (nil: any)
// and conditions. ok is false when a constraint names the destination
// workload, which a selector would have to express.
func migrateAccessRule(r api.AccessRule) (*api.Operation, []api.Condition, bool) {
	op := &api.Operation{Hosts: r.Hosts, NotHosts: r.NotHosts, Methods: r.Methods, NotMethods: r.NotMethods, Paths: r.Paths, NotPaths: r.NotPaths}
	for _, p := range r.Ports {
		op.Ports = append(op.Ports, strconv.Itoa(int(p)))
	}
	for _, p := range r.NotPorts {
		op.NotPorts = append(op.NotPorts, strconv.Itoa(int(p)))
	}
	if slices.Contains(op.Methods, "*") {
		op.Methods = nil
	}
	var whens []api.Condition
	for _, c := range r.Constraints {
		if c.Key == "destination.namespace" || c.Key == "destination.name" || c.Key == "destination.user" || strings.HasPrefix(c.Key, "destination.labels") {
			return nil, nil, false
		}
		whens = append(whens, api.Condition{Key: c.Key, Values: c.Values})
	}
	if reflect.DeepEqual(*op, api.Operation{}) {
		op = nil
	}
	return op, whens, true
}
