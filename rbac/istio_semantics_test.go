package rbac_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// The regression tests of the authorization issue's defects: each case
// states Istio's decision for a request, and fails on the compiler that
// preceded it (the defect is named in the case).

type want struct {
	r       rbac.Request
	allowed bool
}

func peer(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

func checkDecisions(t *testing.T, name string, objs []api.Object, w rbac.Workload, opts rbac.Options, ws []want) *rbac.Output {
	t.Helper()
	out, err := rbac.Compile(objs, w, opts)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for i, c := range ws {
		d, err := out.Explain(c.r)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != c.allowed {
			t.Errorf("%s: request %d (%+v): %s, want allowed=%t", name, i, c.r, d, c.allowed)
		}
	}
	return out
}

const legacyOn = `apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
`

// Defect 1: legacy subject and role fields were decoded and dropped.
func TestLegacyFieldsAreEnforced(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		subject string
		rule    string
		ws      []want
	}{
		{"namespaces", "{namespaces: [trusted]}", "{methods: ['*']}", []want{
			{rbac.Request{Principal: peer("trusted", "a"), Method: "GET", Path: "/"}, true},
			{rbac.Request{Principal: peer("other", "a"), Method: "GET", Path: "/"}, false},
			{rbac.Request{Method: "GET", Path: "/"}, false}}},
		{"notNamespaces", "{notNamespaces: [evil]}", "{methods: ['*']}", []want{
			{rbac.Request{Principal: peer("good", "a"), Method: "GET", Path: "/"}, true},
			{rbac.Request{Principal: peer("evil", "a"), Method: "GET", Path: "/"}, false}}},
		{"names", "{names: [cluster.local/ns/default/sa/sleep]}", "{methods: ['*']}", []want{
			{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, true},
			{rbac.Request{Principal: peer("default", "other"), Method: "GET", Path: "/"}, false}}},
		{"notNames", "{namespaces: [default], notNames: [cluster.local/ns/default/sa/sleep]}", "{methods: ['*']}", []want{
			{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, false},
			{rbac.Request{Principal: peer("default", "other"), Method: "GET", Path: "/"}, true}}},
		{"ips", "{ips: [10.0.0.0/8]}", "{methods: ['*']}", []want{
			{rbac.Request{SourceIP: "10.1.2.3", Method: "GET", Path: "/"}, true},
			{rbac.Request{SourceIP: "192.168.1.1", Method: "GET", Path: "/"}, false}}},
		{"notIps", "{user: '*', notIps: [10.0.0.1]}", "{methods: ['*']}", []want{
			{rbac.Request{SourceIP: "10.1.2.3", Method: "GET", Path: "/"}, true},
			{rbac.Request{SourceIP: "10.0.0.1", Method: "GET", Path: "/"}, false}}},
		{"groups", "{groups: [admins]}", "{methods: ['*']}", []want{
			{rbac.Request{JWT: map[string]any{"iss": "i", "sub": "s", "groups": []string{"admins"}}, Method: "GET", Path: "/"}, true},
			{rbac.Request{JWT: map[string]any{"iss": "i", "sub": "s", "groups": []string{"users"}}, Method: "GET", Path: "/"}, false}}},
		{"notGroups", "{user: '*', notGroups: [banned]}", "{methods: ['*']}", []want{
			{rbac.Request{JWT: map[string]any{"groups": []string{"users"}}, Method: "GET", Path: "/"}, true},
			{rbac.Request{JWT: map[string]any{"groups": []string{"banned"}}, Method: "GET", Path: "/"}, false}}},
		{"empty subject matches nobody", "{}", "{methods: ['*']}", []want{
			{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, false}}},
		{"hosts", "{user: '*'}", "{hosts: [flaskapp.example.com]}", []want{
			{rbac.Request{Host: "flaskapp.example.com", Method: "GET", Path: "/"}, true},
			{rbac.Request{Host: "other.example.com", Method: "GET", Path: "/"}, false}}},
		{"notHosts", "{user: '*'}", "{notHosts: [admin.example.com]}", []want{
			{rbac.Request{Host: "flaskapp.example.com", Method: "GET", Path: "/"}, true},
			{rbac.Request{Host: "admin.example.com", Method: "GET", Path: "/"}, false}}},
	}
	for _, c := range cases {
		y := legacyOn + "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: r, namespace: default}\nspec: {rules: [" + c.rule + "]}\n---\n" +
			"apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b, namespace: default}\nspec: {subjects: [" + c.subject + "], roleRef: {kind: ServiceRole, name: r}}\n"
		objs := decodeAll(t, y)
		checkDecisions(t, "legacy "+c.name, objs, flaskapp, rbac.Options{}, c.ws)
		// policy migrate writes the same decisions out.
		migrated, _ := rbac.Migrate(objs, nil)
		var mobjs []api.Object
		for _, p := range migrated {
			mobjs = append(mobjs, p)
		}
		checkDecisions(t, "migrated "+c.name, mobjs, flaskapp, rbac.Options{}, c.ws)
	}
}

// Defect 2: several from (or to) entries of one rule are ORed.
func TestFromAndToEntriesAreORed(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-two, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [foo]}}, {source: {namespaces: [bar]}}]
    to: [{operation: {methods: [DELETE]}}, {operation: {paths: [/admin]}}]
`)
	checkDecisions(t, "deny two froms", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: peer("foo", "a"), Method: "DELETE", Path: "/x"}, false},
		{rbac.Request{Principal: peer("bar", "a"), Method: "GET", Path: "/admin"}, false},
		{rbac.Request{Principal: peer("baz", "a"), Method: "DELETE", Path: "/admin"}, true},
		{rbac.Request{Principal: peer("bar", "a"), Method: "GET", Path: "/x"}, true},
	})
}

// Defect 3: a root-namespace policy with a selector applies in every
// namespace.
func TestRootNamespaceSelector(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: istio-system}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
`)
	checkDecisions(t, "root selector", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: sleep, Method: "DELETE", Path: "/"}, false},
		{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, true}})
	other := rbac.Workload{Namespace: "prod", Labels: map[string]string{"app": "flaskapp"}}
	checkDecisions(t, "root selector, other namespace", objs, other, rbac.Options{}, []want{
		{rbac.Request{Principal: sleep, Method: "DELETE", Path: "/"}, false}})
	db := rbac.Workload{Namespace: "prod", Labels: map[string]string{"app": "db"}}
	checkDecisions(t, "root selector, unselected workload", objs, db, rbac.Options{}, []want{
		{rbac.Request{Principal: sleep, Method: "DELETE", Path: "/"}, true}})
	p := objs[0].(*api.AuthorizationPolicy)
	if !rbac.Selects(p, other, rbac.Options{}) || rbac.Selects(p, db, rbac.Options{}) {
		t.Error("Selects disagrees with Compile on a root-namespace selector")
	}
}

// Defect 4: values and notValues in one condition are both enforced.
func TestConditionValuesAndNotValues(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: internal, namespace: default}
spec:
  rules: [{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}]}]
`)
	checkDecisions(t, "values+notValues", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{SourceIP: "10.2.3.4", Method: "GET", Path: "/"}, true},
		{rbac.Request{SourceIP: "10.0.0.1", Method: "GET", Path: "/"}, false},
		{rbac.Request{SourceIP: "192.168.0.1", Method: "GET", Path: "/"}, false}})
}

// Defect 5: namespace wildcards; service accounts Istio refuses.
func TestNamespaceWildcardsAndRefusedServiceAccounts(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tests, namespace: default}
spec:
  rules: [{from: [{source: {namespaces: ["test-*", "*-ci"]}}]}]
`)
	checkDecisions(t, "namespace wildcards", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: peer("test-a", "x"), Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: peer("nightly-ci", "x"), Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: peer("prod", "x"), Method: "GET", Path: "/"}, false}})
	sa := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: default}
spec:
  rules: [{from: [{source: {serviceAccounts: ["untrusted/*", "sleep"]}}]}]
`)
	out := checkDecisions(t, "refused service account", sa, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: peer("untrusted", "x"), Method: "GET", Path: "/"}, false},
		{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, false}}) // the rule is dropped, not half-compiled
	if len(out.Reports) != 1 || !strings.Contains(out.Reports[0], `source.serviceAccounts: serviceAccount "untrusted/*"`) || !strings.Contains(out.Reports[0], "rule dropped") {
		t.Errorf("reports: %q", out.Reports)
	}
	// A bare name is in the policy's namespace (Istio).
	bare := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sa, namespace: default}\nspec: {rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]}\n")
	checkDecisions(t, "bare service account", bare, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: sleep, Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: peer("other", "sleep"), Method: "GET", Path: "/"}, false}})
}

// Defect 6: requestPrincipals split as Istio splits them.
func TestRequestPrincipalSplit(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {requestPrincipals: ["evil*", "plain"]}}]}]
`)
	checkDecisions(t, "requestPrincipal without /", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{JWT: map[string]any{"iss": "evil.example.com", "sub": "x"}, Method: "GET", Path: "/"}, false},
		{rbac.Request{JWT: map[string]any{"iss": "plain", "sub": ""}, Method: "GET", Path: "/"}, false},
		{rbac.Request{JWT: map[string]any{"iss": "plain", "sub": "x"}, Method: "GET", Path: "/"}, true},
		{rbac.Request{JWT: map[string]any{"iss": "good.example.com", "sub": "x"}, Method: "GET", Path: "/"}, true}})
	url := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-url, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {requestPrincipals: ["https://evil.example.com/*", "*/root"]}}]}]
`)
	checkDecisions(t, "requestPrincipal with a URL issuer", url, flaskapp, rbac.Options{}, []want{
		{rbac.Request{JWT: map[string]any{"iss": "https://evil.example.com", "sub": "x"}, Method: "GET", Path: "/"}, false},
		{rbac.Request{JWT: map[string]any{"iss": "https://good.example.com", "sub": "root"}, Method: "GET", Path: "/"}, false},
		{rbac.Request{JWT: map[string]any{"iss": "https://good.example.com", "sub": "x"}, Method: "GET", Path: "/"}, true}})
}

// Defect 7: source.trustDomains are enforced.
func TestTrustDomains(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: td, namespace: default}
spec:
  rules: [{from: [{source: {trustDomains: [partner.example], notTrustDomains: ["*.evil"]}}]}]
`)
	checkDecisions(t, "trustDomains", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Principal: "spiffe://partner.example/ns/a/sa/b", Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: "spiffe://cluster.local/ns/a/sa/b", Method: "GET", Path: "/"}, false},
		{rbac.Request{Principal: "spiffe://partner.example.evil/ns/a/sa/b", Method: "GET", Path: "/"}, false}})
}

// Defect 8: trust-domain aliases expand principals as Istio does.
func TestTrustDomainAliases(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep, namespace: default}
spec:
  rules: [{from: [{source: {principals: [old.example/ns/default/sa/sleep]}}]}]
`)
	opts := rbac.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("new.example"), TrustDomainAliases: []string{"old.example"}}
	checkDecisions(t, "aliases", objs, flaskapp, opts, []want{
		{rbac.Request{Principal: "spiffe://new.example/ns/default/sa/sleep", Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: "spiffe://old.example/ns/default/sa/sleep", Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: "spiffe://other.example/ns/default/sa/sleep", Method: "GET", Path: "/"}, false}})
	// cluster.local always means the local trust domain and its aliases.
	local := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sleep, namespace: default}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]}\n")
	checkDecisions(t, "cluster.local", local, flaskapp, opts, []want{
		{rbac.Request{Principal: "spiffe://new.example/ns/default/sa/sleep", Method: "GET", Path: "/"}, true},
		{rbac.Request{Principal: "spiffe://old.example/ns/default/sa/sleep", Method: "GET", Path: "/"}, true}})
}

// Defect 9: Istio's path templates.
func TestPathTemplates(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: items, namespace: default}
spec:
  rules: [{to: [{operation: {paths: ["/api/{*}/items", "/static/{**}"]}}]}]
`)
	out := checkDecisions(t, "templates", objs, flaskapp, rbac.Options{}, []want{
		{rbac.Request{Method: "GET", Path: "/api/42/items"}, true},
		{rbac.Request{Method: "GET", Path: "/api/42/items?x=1"}, true},
		{rbac.Request{Method: "GET", Path: "/api/4/2/items"}, false},
		{rbac.Request{Method: "GET", Path: "/api//items"}, false},
		{rbac.Request{Method: "GET", Path: "/static/css/site.css"}, true},
		{rbac.Request{Method: "GET", Path: "/other"}, false}})
	y, _ := out.YAML()
	if !strings.Contains(string(y), "path_template: /api/*/items") || !strings.Contains(string(y), "name: uri-template") {
		t.Errorf("no uri_template in:\n%s", y)
	}
}

// Defect 10: inbound paths are normalised before RBAC, as Envoy does
// under Istio's pathNormalization.
func TestPathNormalization(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`)
	req := func(p string) rbac.Request { return rbac.Request{Method: "GET", Path: p} }
	checkDecisions(t, "BASE", objs, flaskapp, rbac.Options{}, []want{
		{req("/admin"), false}, {req("/./admin"), false}, {req("/x/../admin"), false}, {req("/%61dmin"), false},
		{req("//admin"), true}, // Istio's default does not merge slashes
		{req("/public"), true}})
	checkDecisions(t, "MERGE_SLASHES", objs, flaskapp, rbac.Options{PathNormalization: rbac.PathMergeSlashes}, []want{
		{req("//admin"), false}, {req("/a/..//admin"), false}})
	checkDecisions(t, "DECODE_AND_MERGE_SLASHES", objs, flaskapp, rbac.Options{PathNormalization: rbac.PathDecodeAndMergeSlashes}, []want{
		{req("/%2Fadmin"), false}})
	checkDecisions(t, "NONE", objs, flaskapp, rbac.Options{PathNormalization: rbac.PathNone}, []want{
		{req("/./admin"), true}})
	for p, want := range map[string]string{"/a/b/../c": "/a/c", "/a/./b/.": "/a/b/", "/../a": "/a", "/%7euser": "/~user", "/a%2fb": "/a%2Fb", "/x?y=/../z": "/x?y=/../z"} {
		if got := rbac.NormalizePath(rbac.PathBase, p); got != want {
			t.Errorf("NormalizePath(BASE, %q) = %q, want %q", p, got, want)
		}
	}
	if err := rbac.CheckPathNormalization("SOMETIMES"); err == nil || !strings.Contains(err.Error(), "BASE, NONE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES") {
		t.Errorf("CheckPathNormalization: %v", err)
	}
}

// Defect 11: RBAC reads the JWT payload where Istio's jwt_authn writes it.
func TestJWTPayloadKey(t *testing.T) {
	t.Parallel()
	if authn.JWTPayloadKey != "payload" {
		t.Fatalf("jwt_authn payload key %q, Istio's is payload", authn.JWTPayloadKey)
	}
	objs := decodeAll(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: jwt, namespace: default}\nspec: {rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}\n")
	out, err := rbac.Compile(objs, flaskapp, rbac.Options{})
	if err != nil {
		t.Fatal(err)
	}
	y, _ := out.YAML()
	if !strings.Contains(string(y), "key: payload") || strings.Contains(string(y), "jwt_payload") {
		t.Errorf("metadata path:\n%s", y)
	}
}

// Forms Istio's validation refuses are refused at decoding, with the
// field named: an empty from/to entry would otherwise match everyone.
func TestEmptyEntriesRefused(t *testing.T) {
	t.Parallel()
	for rules, want := range map[string]string{
		"[{from: [{}]}]":               "spec.rules[0].from[0].source: is required (an empty from entry would match every caller)",
		"[{from: [{source: {}}]}]":     "spec.rules[0].from[0].source: must not be empty (it would match every caller; leave out from instead)",
		"[{to: [{operation: {}}]}]":    "spec.rules[0].to[0].operation: must not be empty (it would match every request; leave out to instead)",
		"[{when: [{key: source.ip}]}]": "spec.rules[0].when[0]: source.ip: at least one of values or notValues must be set",
		"[{to: [{}]}, {from: [{}]}]":   "spec.rules[0].to[0].operation: must not be empty (it would match every request; leave out to instead)",
	} {
		_, err := api.Decode([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\nspec: {rules: " + rules + "}\n"))
		if err == nil || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("%s: %v\nwant ...%s", rules, err, want)
		}
	}
}
