package rbac_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/rbac"
)

// TestRequestPrincipalSplitReported: a request principal whose
// issuer/subject split (Istio's: at the last "/") falls inside the
// issuer's "://" compiles to an issuer no token has. Check and Compile
// report it with the value to write, in every field that takes request
// principals; the values that mean what they read as are not reported.
func TestRequestPrincipalSplitReported(t *testing.T) {
	t.Parallel()
	const where = "AuthorizationPolicy default/jwt rule 0: "
	cases := []struct {
		name   string
		source api.Source
		when   []api.Condition
		want   []string
	}{
		{"issuer prefix", api.Source{RequestPrincipals: []string{"https://issuer.example.com*"}}, nil, []string{where +
			`source.requestPrincipals: "https://issuer.example.com*" means issuer "https:/" and a subject starting "issuer.example.com" (Istio splits issuer and subject at the last "/"), which no token has; for any subject of issuer https://issuer.example.com write "https://issuer.example.com/*"`}},
		{"issuer alone", api.Source{NotRequestPrincipals: []string{"https://issuer.example.com"}}, nil, []string{where +
			`source.notRequestPrincipals: "https://issuer.example.com" means issuer "https:/" and subject "issuer.example.com" (Istio splits issuer and subject at the last "/"), which no token has; write "https://issuer.example.com/<subject>" (one subject) or "https://issuer.example.com/*" (any subject of issuer https://issuer.example.com)`}},
		{"when", api.Source{}, []api.Condition{{Key: "request.auth.principal", NotValues: []string{"http://i.example*"}}}, []string{where +
			`when[0].request.auth.principal notValues: "http://i.example*" means issuer "http:/" and a subject starting "i.example" (Istio splits issuer and subject at the last "/"), which no token has; for any subject of issuer http://i.example write "http://i.example/*"`}},
		{"what it reads as", api.Source{RequestPrincipals: []string{"https://issuer.example.com/*", "https://issuer.example.com/alice",
			"*", "*/bob", "issuer*", "*suffix", "https://issuer.example.com/team*", "accounts.example.com/alice", "*https://x.example"}}, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rule := api.Rule{When: tc.when}
			if !(tc.source.RequestPrincipals == nil && tc.source.NotRequestPrincipals == nil) {
				rule.From = []api.RuleFrom{{Source: &tc.source}}
			}
			p := &api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: "jwt", Namespace: "default"},
				Spec: api.AuthorizationPolicySpec{Action: "DENY", Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"app": "nowhere"}}, Rules: []api.Rule{rule}}}
			got := rbac.Check([]api.Object{p}, rbac.Options{})
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			// The workload's compile reports it too (serve's log, policy
			// compile's reports:), with the same words.
			out, err := rbac.Compile([]api.Object{p}, rbac.Workload{Namespace: "default", Labels: map[string]string{"app": "nowhere"}}, rbac.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(out.Reports, tc.want) {
				t.Fatalf("Compile:\n%s\nwant:\n%s", strings.Join(out.Reports, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestCheckEveryPolicy: Check compiles every AuthorizationPolicy, those
// that select no workload included, and returns each one's reports.
func TestCheckEveryPolicy(t *testing.T) {
	t.Parallel()
	objs, err := api.Decode([]byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: default}
spec:
  selector: {matchLabels: {app: nowhere}}
  rules: [{when: [{key: request.foo, values: [x]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: other}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/*/items"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := rbac.Check(objs, rbac.Options{})
	want := []string{
		`AuthorizationPolicy default/a rule 0: when[0]: unknown key "request.foo"; rule dropped (ALLOW is narrowed, never widened)`,
		`AuthorizationPolicy other/b rule 0: operation.paths: path "/api/*/items": * is allowed only at the start or the end (use {*} or {**} for segments); value ignored`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
