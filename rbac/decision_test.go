package rbac_test

import (
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/rbac"
)

var flaskapp = rbac.Workload{Namespace: "default", Labels: map[string]string{"app": "flaskapp"}, ServiceFQDNs: []string{"flaskapp.default.svc.cluster.local"}}

const sleep = "spiffe://cluster.local/ns/default/sa/sleep"

func decide(t *testing.T, objs []api.Object, w rbac.Workload, tcp bool, r rbac.Request) rbac.Decision {
	t.Helper()
	out, err := rbac.Compile(objs, w, rbac.Options{TCP: tcp})
	if err != nil {
		t.Fatal(err)
	}
	d, err := out.Explain(r)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func decodeAll(t *testing.T, y string) []api.Object {
	t.Helper()
	objs, err := api.Decode([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestDecisions(t *testing.T) {
	t.Parallel()
	const policies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-untrusted, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [untrusted]}}]
  - to: [{operation: {paths: ["/admin/*"]}}]
    when: [{key: source.ip, notValues: [10.0.0.0/8]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ["/api/*", /healthz]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example.com/alice"]}}]
    to: [{operation: {methods: [POST]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
`
	objs := decodeAll(t, policies)
	cases := []struct {
		name    string
		r       rbac.Request
		allowed bool
		policy  string
	}{
		{"sleep reads the api", rbac.Request{Principal: sleep, Method: "GET", Path: "/api/items?x=1", SourceIP: "10.1.2.3"}, true, "ns[default]-policy[readers]-rule[0]"},
		{"sleep writes", rbac.Request{Principal: sleep, Method: "DELETE", Path: "/api/items", SourceIP: "10.1.2.3"}, false, ""},
		{"sleep on another path", rbac.Request{Principal: sleep, Method: "GET", Path: "/private", SourceIP: "10.1.2.3"}, false, ""},
		{"no mTLS", rbac.Request{Method: "GET", Path: "/api/items", SourceIP: "10.1.2.3"}, false, ""},
		{"untrusted namespace", rbac.Request{Principal: "spiffe://cluster.local/ns/untrusted/sa/sleep", Method: "GET", Path: "/api/x", SourceIP: "10.1.2.3"}, false, "ns[default]-policy[deny-untrusted]-rule[0]"},
		{"admin from outside", rbac.Request{Principal: sleep, Method: "GET", Path: "/admin/x", SourceIP: "192.168.0.9"}, false, "ns[default]-policy[deny-untrusted]-rule[1]"},
		{"admin from inside, not allowed either", rbac.Request{Principal: sleep, Method: "GET", Path: "/admin/x", SourceIP: "10.0.0.9"}, false, ""},
		{"alice posts with a JWT", rbac.Request{Method: "POST", Path: "/api/items", SourceIP: "10.1.2.3",
			JWT: map[string]any{"iss": "https://issuer.example.com", "sub": "alice"}}, true, "ns[default]-policy[readers]-rule[1]"},
		{"bob posts with a JWT", rbac.Request{Method: "POST", Path: "/api/items", SourceIP: "10.1.2.3",
			JWT: map[string]any{"iss": "https://issuer.example.com", "sub": "bob"}}, false, ""},
	}
	for _, tc := range cases {
		d := decide(t, objs, flaskapp, false, tc.r)
		if d.Allowed != tc.allowed || d.Policy != tc.policy {
			t.Errorf("%s: %s (policy %q); want allowed=%t by %q", tc.name, d, d.Policy, tc.allowed, tc.policy)
		}
	}
	// JWT claims in when conditions and wildcard request principals.
	claims := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: default}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*/alice"]}}]
    when:
    - {key: request.auth.audiences, values: [flaskapp]}
    - {key: "request.auth.claims[groups]", values: [admins]}
    - {key: request.auth.presenter, values: ["web-*"]}
`)
	for _, tc := range []struct {
		jwt  map[string]any
		want bool
	}{
		{map[string]any{"iss": "https://a", "sub": "alice", "aud": []string{"x", "flaskapp"}, "groups": []string{"admins"}, "azp": "web-ui"}, true},
		{map[string]any{"iss": "https://b", "sub": "alice", "aud": "flaskapp", "groups": "admins", "azp": "web-2"}, true},
		{map[string]any{"iss": "https://a", "sub": "alice", "aud": []string{"x"}, "groups": []string{"admins"}, "azp": "web-ui"}, false},
		{map[string]any{"iss": "https://a", "sub": "alice", "aud": "flaskapp", "groups": []string{"users"}, "azp": "web-ui"}, false},
		{map[string]any{"iss": "https://a", "sub": "bob", "aud": "flaskapp", "groups": "admins", "azp": "web-ui"}, false},
		{nil, false},
	} {
		d := decide(t, claims, flaskapp, false, rbac.Request{Method: "GET", Path: "/", JWT: tc.jwt})
		if d.Allowed != tc.want {
			t.Errorf("JWT %v: %s, want allowed=%t", tc.jwt, d, tc.want)
		}
	}

	// The audit policy logged the admin request.
	d := decide(t, objs, flaskapp, false, rbac.Request{Principal: sleep, Method: "GET", Path: "/admin/x", SourceIP: "10.0.0.9"})
	if len(d.Audited) != 1 || d.Audited[0] != "ns[default]-policy[audit-admin]-rule[0]" {
		t.Errorf("audited %v", d.Audited)
	}
	// A workload no ALLOW policy selects is open, except for DENY.
	other := rbac.Workload{Namespace: "default", Labels: map[string]string{"app": "other"}}
	if d := decide(t, objs, other, false, rbac.Request{Method: "DELETE", Path: "/x", SourceIP: "10.0.0.1"}); !d.Allowed {
		t.Errorf("unselected workload: %s", d)
	}
	// ALLOW with no rules denies everything.
	none := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec: {}\n")
	if d := decide(t, none, flaskapp, false, rbac.Request{Principal: sleep, Method: "GET", Path: "/"}); d.Allowed {
		t.Errorf("allow-nothing allowed: %s", d)
	}
	// On a TCP port the HTTP-only rule is dropped from ALLOW: narrower.
	if d := decide(t, objs, flaskapp, true, rbac.Request{Principal: sleep, DestPort: 8080, SourceIP: "10.1.2.3"}); d.Allowed {
		t.Errorf("TCP: an HTTP-only ALLOW rule widened access: %s", d)
	}
	// Dry run decides nothing but reports.
	dry := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: DENY, rules: [{}]}\n")
	if d := decide(t, dry, flaskapp, false, rbac.Request{Method: "GET", Path: "/"}); !d.Allowed || len(d.DryRun) != 1 {
		t.Errorf("dry run: %s %v", d, d.DryRun)
	}
	// The annotation is read as Istio reads it, strconv.ParseBool: "1",
	// "t" and "TRUE" are dry-run; "tRuE" and "yes" are not booleans, and
	// the DENY is enforced (reported), never left out.
	for v, dryRun := range map[string]bool{"true": true, "1": true, "t": true, "TRUE": true, "false": false, "0": false, "tRuE": false, "yes": false} {
		objs := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default, annotations: {istio.io/dry-run: '"+v+"'}}\nspec: {action: DENY, rules: [{}]}\n")
		if d := decide(t, objs, flaskapp, false, rbac.Request{Method: "GET", Path: "/"}); d.Allowed != dryRun {
			t.Errorf("istio.io/dry-run %q: %s; want dry-run %v as in Istio", v, d, dryRun)
		}
	}
}

const legacyPolicies = `
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer, namespace: default}
spec:
  rules:
  - services: ["flaskapp.default.svc.cluster.local"]
    methods: ["GET"]
    paths: ["/api/*"]
  - services: ["*"]
    methods: ["*"]
    paths: ["/healthz"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: sleep-viewer, namespace: default}
spec:
  subjects: [{user: cluster.local/ns/default/sa/sleep}]
  roleRef: {kind: ServiceRole, name: viewer}
`

// TestMigrateKeepsDecisions: the AuthorizationPolicies migrate writes give
// the legacy policies' decisions on the same table.
func TestMigrateKeepsDecisions(t *testing.T) {
	t.Parallel()
	legacy := decodeAll(t, legacyPolicies)
	migrated, notes := rbac.Migrate(legacy, map[string]map[string]string{"flaskapp.default.svc.cluster.local": {"app": "flaskapp"}})
	for _, n := range notes {
		if !strings.HasSuffix(n, "paths are now matched without the query string") {
			t.Fatalf("note: %s", n)
		}
	}
	var mobjs []api.Object
	for _, p := range migrated {
		mobjs = append(mobjs, p)
	}
	table := []rbac.Request{
		{Principal: sleep, Method: "GET", Path: "/api/x"},
		{Principal: sleep, Method: "POST", Path: "/api/x"},
		{Principal: sleep, Method: "DELETE", Path: "/healthz"},
		{Principal: "spiffe://cluster.local/ns/default/sa/other", Method: "GET", Path: "/api/x"},
		{Method: "GET", Path: "/api/x"},
		{Principal: sleep, Method: "GET", Path: "/other"},
	}
	want := []bool{true, false, true, false, false, false}
	for _, w := range []rbac.Workload{flaskapp, {Namespace: "default", Labels: map[string]string{"app": "db"}, ServiceFQDNs: []string{"db.default.svc.cluster.local"}}} {
		for i, r := range table {
			l := decide(t, legacy, w, false, r)
			m := decide(t, mobjs, w, false, r)
			if l.Allowed != m.Allowed {
				t.Errorf("%v request %d: legacy %s, migrated %s", w.Labels, i, l, m)
			}
			if w.Labels["app"] == "flaskapp" && l.Allowed != want[i] {
				t.Errorf("request %d: legacy decided %s, want allowed=%t", i, l, want[i])
			}
		}
	}
	// Outside the inclusion nothing is enforced, before or after.
	prod := rbac.Workload{Namespace: "prod"}
	if d := decide(t, legacy, prod, false, rbac.Request{Method: "DELETE", Path: "/"}); !d.Allowed {
		t.Errorf("legacy enforced outside the inclusion: %s", d)
	}
}

func TestAffectedWorkloads(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: one-app, namespace: default}
spec: {selector: {matchLabels: {app: flaskapp}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
`)
	ws := []rbac.Workload{flaskapp, {Namespace: "default", Labels: map[string]string{"app": "db"}}, {Namespace: "prod", Labels: map[string]string{"app": "flaskapp"}}}
	for i, want := range []int{1, 2, 3} {
		p := objs[i].(*api.AuthorizationPolicy)
		if got := len(rbac.Affected(p, p, ws, rbac.Options{})); got != want {
			t.Errorf("%s affects %d workloads, want %d", p.Metadata.Name, got, want)
		}
	}
	// Moving a selector from flaskapp to db recompiles both.
	moved := *objs[0].(*api.AuthorizationPolicy)
	moved.Spec.Selector = &api.WorkloadSelector{MatchLabels: map[string]string{"app": "db"}}
	if got := len(rbac.Affected(objs[0].(*api.AuthorizationPolicy), &moved, ws, rbac.Options{})); got != 2 {
		t.Errorf("selector move affects %d, want 2", got)
	}
}

// FuzzExplain: decoding, compiling and explaining any input never panics.
func FuzzExplain(f *testing.F) {
	f.Add([]byte(legacyPolicies))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], when: [{key: 'request.headers[x]', values: ['*']}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := api.Decode(data)
		if err != nil {
			return
		}
		for _, tcp := range []bool{false, true} {
			out, err := rbac.Compile(objs, flaskapp, rbac.Options{TCP: tcp})
			if err != nil {
				continue
			}
			_, _ = out.Explain(rbac.Request{Principal: sleep, Method: "GET", Path: "/api/x", SourceIP: "10.0.0.1", DestPort: 8080, Headers: map[string]string{"x": "y"}})
			if _, err := out.YAML(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzMonotonic checks two invariants of Istio's semantics on random
// policy sets and requests: adding a DENY policy never turns a DENY into
// an ALLOW; and where an ALLOW policy already applies to the workload,
// adding another ALLOW policy never turns an ALLOW into a DENY. Every
// compiled filter passes ValidateAll (Compile checks it) and nothing
// panics.
func FuzzMonotonic(f *testing.F) {
	for _, s := range []string{"", "seed-1", "seed-2-longer-than-16-bytes", "\x00\x01\x02"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, seed []byte) {
		g := newGen(seed)
		objs := g.policies(1 + g.r.IntN(4))
		tcp := g.r.IntN(4) == 0
		opts := rbac.Options{TCP: tcp}
		before, err := rbac.Compile(objs, flaskapp, opts)
		if err != nil {
			t.Fatalf("compile: %v", err)
		}
		deny := g.policy("default", "added-deny", "DENY")
		withDeny, err := rbac.Compile(append(append([]api.Object{}, objs...), deny), flaskapp, opts)
		if err != nil {
			t.Fatalf("compile with DENY: %v", err)
		}
		allowApplies := false
		for _, o := range objs {
			p := o.(*api.AuthorizationPolicy)
			if (p.Spec.Action == "ALLOW" || p.Spec.Action == "") && rbac.Selects(p, flaskapp, opts) {
				allowApplies = true
			}
		}
		allow := g.policy("default", "added-allow", "ALLOW")
		allow.Spec.Selector = nil
		withAllow, err := rbac.Compile(append(append([]api.Object{}, objs...), allow), flaskapp, opts)
		if err != nil {
			t.Fatalf("compile with ALLOW: %v", err)
		}
		for i := 0; i < 8; i++ {
			r := g.request()
			b, _ := before.Explain(r)
			d, _ := withDeny.Explain(r)
			if !b.Allowed && d.Allowed {
				t.Fatalf("adding a DENY allowed %+v: before %s, after %s", r, b, d)
			}
			a, _ := withAllow.Explain(r)
			if allowApplies && b.Allowed && !a.Allowed {
				t.Fatalf("adding an ALLOW denied %+v: before %s, after %s", r, b, a)
			}
		}
	})
}
