package rbac_test

import (
	"fmt"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/rbac"
)

// bigMesh: 10,000 AuthorizationPolicies over 1,000 namespaces (per
// namespace one DENY namespace-wide, nine ALLOW selecting an app each), and
// 10 workloads per namespace.
func bigMesh() ([]api.Object, []rbac.Workload) {
	var objs []api.Object
	var ws []rbac.Workload
	for n := range 1000 {
		ns := fmt.Sprintf("ns-%d", n)
		objs = append(objs, &api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: "deny-untrusted", Namespace: ns},
			Spec: api.AuthorizationPolicySpec{Action: "DENY", Rules: []api.Rule{{From: []api.RuleFrom{{Source: &api.Source{Namespaces: []string{"untrusted"}}}}}}}})
		for i := 1; i < 10; i++ {
			app := fmt.Sprintf("app-%d", i)
			objs = append(objs, &api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: app, Namespace: ns},
				Spec: api.AuthorizationPolicySpec{Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"app": app}}, Rules: []api.Rule{{
					From: []api.RuleFrom{{Source: &api.Source{Principals: []string{"cluster.local/ns/" + ns + "/sa/client"}}}},
					To:   []api.RuleTo{{Operation: &api.Operation{Methods: []string{"GET"}, Paths: []string{"/api/*"}}}},
				}}}})
		}
		for i := range 10 {
			ws = append(ws, rbac.Workload{Namespace: ns, Labels: map[string]string{"app": fmt.Sprintf("app-%d", i)}})
		}
	}
	return objs, ws
}

// BenchmarkCompileAuthz: compile one workload's filters in that mesh, and
// count the workloads a one-policy edit makes recompile.
func BenchmarkCompileAuthz(b *testing.B) {
	objs, ws := bigMesh()
	ix := rbac.NewIndex(objs, rbac.Options{})
	w := rbac.Workload{Namespace: "ns-500", Labels: map[string]string{"app": "app-3"}}
	b.Run("workload", func(b *testing.B) {
		for b.Loop() {
			if _, err := ix.Compile(w, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	edit := objs[500*10+3].(*api.AuthorizationPolicy) // ns-500/app-3
	edited := *edit
	edited.Spec.Action = "DENY"
	for _, tc := range []struct {
		name     string
		old, new *api.AuthorizationPolicy
	}{
		{"edit-selector-policy", edit, &edited},
		{"edit-namespace-policy", objs[500*10].(*api.AuthorizationPolicy), objs[500*10].(*api.AuthorizationPolicy)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				n = len(rbac.Affected(tc.old, tc.new, ws, rbac.Options{}))
			}
			b.ReportMetric(float64(n), "workloads-recompiled")
			b.ReportMetric(float64(len(ws)), "workloads-total")
		})
	}
}
