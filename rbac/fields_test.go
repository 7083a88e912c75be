package rbac_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/fieldwalk"
	"github.com/wardenmesh/warden/rbac"
)

// Every field of every authorization kind is accounted for: set on its
// own to a valid value, it changes the compiled filters or a report names
// it. A field added to api without compiler support fails here, which is
// how an ALLOW once came to allow everyone.

// fieldSamples are a valid value for each field, by json name (or
// Type.name where one name means different things).
var fieldSamples = map[string]any{
	"principals": []string{"cluster.local/ns/x/sa/y"}, "notPrincipals": []string{"cluster.local/ns/x/sa/z"},
	"requestPrincipals": []string{"https://i.example/u"}, "notRequestPrincipals": []string{"https://i.example/v"},
	"namespaces": []string{"x"}, "notNamespaces": []string{"z"},
	"serviceAccounts": []string{"x/y"}, "notServiceAccounts": []string{"x/z"},
	"ipBlocks": []string{"10.0.0.0/8"}, "notIpBlocks": []string{"10.0.0.1"},
	"remoteIpBlocks": []string{"192.168.0.0/16"}, "notRemoteIpBlocks": []string{"192.168.0.1"},
	"trustDomains": []string{"td.example"}, "notTrustDomains": []string{"evil.example"},
	"hosts": []string{"h.example"}, "notHosts": []string{"admin.example"},
	"Operation.ports": []string{"8080"}, "Operation.notPorts": []string{"9090"},
	"AccessRule.ports": []int32{8080}, "AccessRule.notPorts": []int32{9090},
	"methods": []string{"POST"}, "notMethods": []string{"DELETE"},
	"paths": []string{"/p"}, "notPaths": []string{"/admin"},
	"Condition.key": "remote.ip", "Condition.values": []string{"172.16.0.0/12"}, "Condition.notValues": []string{"10.0.0.1"},
	"AccessRuleConstraint.key": "destination.port", "AccessRuleConstraint.values": []string{"8080"},
	"matchLabels":                map[string]string{"app": "other"},
	"PolicyTargetReference.kind": "Gateway", "PolicyTargetReference.name": "gw", "PolicyTargetReference.group": "gateway.networking.k8s.io",
	"PolicyTargetReference.namespace": "default",
	"action":                          "DENY", "ExtensionProvider.name": "ext",
	"services": []string{"other.default.svc.cluster.local"},
	"user":     "cluster.local/ns/x/sa/y", "names": []string{"cluster.local/ns/x/sa/y"}, "notNames": []string{"cluster.local/ns/default/sa/sleep"},
	"group": "admins", "groups": []string{"admins"}, "notGroups": []string{"banned"},
	"ips": []string{"10.0.0.0/8"}, "notIps": []string{"10.0.0.1"},
	"properties":   map[string]string{"source.namespace": "x"},
	"RoleRef.kind": "ServiceRole", "RoleRef.name": "other",
	"ServiceRoleBindingSpec.mode": "PERMISSIVE", "ServiceRoleBindingSpec.role": "r",
	"RbacConfigSpec.mode": "OFF", "enforcementMode": "PERMISSIVE",
	"RbacTarget.services": []string{"flaskapp.default.svc.cluster.local"}, "RbacTarget.namespaces": []string{"default"},
}

// exempt lists the fields whose only valid value is the one they
// already hold, with the reason.
var exempt = map[string]string{
	"ServiceRoleBinding.roleRef.kind": "ServiceRole is its only valid value (api refuses others)",
}

func sampleFor(t *testing.T, owner reflect.Type, name string, ft reflect.Type) reflect.Value {
	t.Helper()
	s, ok := fieldSamples[owner.Name()+"."+name]
	if !ok {
		s, ok = fieldSamples[name]
	}
	if !ok {
		t.Fatalf("no sample for %s.%s: add one, and make the compiler read the field or report it", owner.Name(), name)
	}
	v := reflect.ValueOf(s)
	if !v.Type().AssignableTo(ft) {
		t.Fatalf("sample for %s.%s is %T, field is %s", owner.Name(), name, s, ft)
	}
	return v
}

func rendered(t *testing.T, objs []api.Object, w rbac.Workload, tcp bool) (string, []string) {
	t.Helper()
	out, err := rbac.Compile(objs, w, rbac.Options{TCP: tcp})
	if err != nil {
		t.Fatal(err)
	}
	y, _ := out.YAML()
	return string(y), out.Reports
}

func accountFields(t *testing.T, kind string, spec any, build func(spec any) []api.Object, w rbac.Workload) int {
	n := 0
	st := reflect.TypeOf(spec).Elem()
	for _, tcp := range []bool{false, true} {
		baseY, baseR := rendered(t, build(spec), w, tcp)
		for _, l := range fieldwalk.Leaves(st) {
			if exempt[kind+"."+l.Path] != "" {
				continue
			}
			n++
			val := sampleFor(t, l.Owner, l.Name, l.Type)
			c := reflect.New(st)
			b, _ := json.Marshal(spec)
			_ = json.Unmarshal(b, c.Interface())
			l.Set(c.Elem(), val)
			y, reports := rendered(t, build(c.Interface()), w, tcp)
			if y != baseY || newReportNames(reports, baseR, l.Name) {
				continue
			}
			t.Errorf("%s spec.%s (tcp=%t): set to %v, neither the filters nor a report changed", kind, l.Path, tcp, val)
		}
	}
	return n
}

// newReportNames: a report not in base names the field.
func newReportNames(reports, base []string, name string) bool {
	for _, r := range reports {
		if strings.Contains(r, name) && !slices.Contains(base, r) {
			return true
		}
	}
	return false
}

func TestEveryAuthorizationFieldIsAccounted(t *testing.T) {
	t.Parallel()
	w := rbac.Workload{Namespace: "default", Labels: map[string]string{"app": "flaskapp"}, ServiceFQDNs: []string{"flaskapp.default.svc.cluster.local"}}
	base := &api.AuthorizationPolicySpec{Rules: []api.Rule{{
		From: []api.RuleFrom{{Source: &api.Source{Principals: []string{"cluster.local/ns/default/sa/sleep"}}}},
		To:   []api.RuleTo{{Operation: &api.Operation{Ports: []string{"80"}}}},
		When: []api.Condition{{Key: "source.ip", Values: []string{"10.0.0.0/8"}}},
	}}}
	n := accountFields(t, "AuthorizationPolicy", base, func(spec any) []api.Object {
		return []api.Object{&api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: "p", Namespace: "default"}, Spec: *spec.(*api.AuthorizationPolicySpec)}}
	}, w)

	legacy := func(cfg api.RbacConfigSpec, role api.ServiceRoleSpec, binding api.ServiceRoleBindingSpec) []api.Object {
		return []api.Object{
			&api.ClusterRbacConfig{Metadata: api.ObjectMeta{Name: "default"}, Spec: cfg},
			&api.ServiceRole{Metadata: api.ObjectMeta{Name: "r", Namespace: "default"}, Spec: role},
			&api.ServiceRoleBinding{Metadata: api.ObjectMeta{Name: "b", Namespace: "default"}, Spec: binding},
		}
	}
	cfg := api.RbacConfigSpec{Mode: "ON"}
	role := api.ServiceRoleSpec{Rules: []api.AccessRule{{Ports: []int32{80}, Constraints: []api.AccessRuleConstraint{{Key: "destination.ip", Values: []string{"10.0.0.0/8"}}}}}}
	binding := api.ServiceRoleBindingSpec{Subjects: []api.Subject{{User: "cluster.local/ns/default/sa/sleep"}}, RoleRef: &api.RoleRef{Kind: "ServiceRole", Name: "r"}}
	n += accountFields(t, "ServiceRole", &role, func(spec any) []api.Object {
		return legacy(cfg, *spec.(*api.ServiceRoleSpec), binding)
	}, w)
	n += accountFields(t, "ServiceRoleBinding", &binding, func(spec any) []api.Object {
		return legacy(cfg, role, *spec.(*api.ServiceRoleBindingSpec))
	}, w)
	n += accountFields(t, "ClusterRbacConfig", &api.RbacConfigSpec{Mode: "ON_WITH_EXCLUSION", Exclusion: &api.RbacTarget{}}, func(spec any) []api.Object {
		return legacy(*spec.(*api.RbacConfigSpec), role, binding)
	}, w)
	if n < 2*70 {
		t.Errorf("walked %d fields (HTTP and TCP), expected every field of the four kinds", n)
	}
	t.Logf("%d fields accounted for (HTTP and TCP)", n)
}
