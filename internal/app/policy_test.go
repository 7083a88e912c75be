package app_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyCheckAndCompile(t *testing.T) {
	t.Parallel()
	examples := filepath.Join("..", "..", "docs", "examples")
	code, out, stderr := run(t, "policy", "check", "-f", examples, "--labels", "app=flaskapp", "--port", "http:8080")
	want := "10 objects valid\nport 8080: STRICT (mesh-level PeerAuthentication istio-system/default)\n"
	if code != 0 || out != want {
		t.Fatalf("policy check: %d\n%s%s\nwant:\n%s", code, out, stderr, want)
	}
	code, out, stderr = run(t, "policy", "compile", "--kind", "authn", "-f", examples, "--port", "8080", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "require_client_certificate: true") || !strings.Contains(out, "name: ROOTCA") {
		t.Fatalf("policy compile: %d\n%s%s", code, out, stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: default}\nspec: {mtls: {mode: STRICTEST}}\n"), 0o644)
	code, out, stderr = run(t, "policy", "check", "-f", bad)
	if want := "error: " + bad + `: api: document 1 (PeerAuthentication default/x): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT` + "\n"; code != 1 || !strings.HasPrefix(out, want) || stderr != "warden policy check: "+bad+": 1 problem\n" {
		t.Fatalf("bad input: %d %q %q\nwant %q", code, out, stderr, want)
	}
	if code, _, stderr = run(t, "policy", "compile", "-f", examples, "--port", "http"); code != 2 || !strings.Contains(stderr, `port "http" is not [name:]number`) {
		t.Fatalf("bad port flag: %d %s", code, stderr)
	}
}

func TestPolicyAuthzCommands(t *testing.T) {
	t.Parallel()
	examples := filepath.Join("..", "..", "docs", "examples")
	base := []string{"-f", examples, "--labels", "app=flaskapp", "--services", "flaskapp.default.svc.cluster.local"}
	code, out, stderr := run(t, append([]string{"policy", "explain", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep", "--method", "GET", "--path", "/x"}, base...)...)
	if code != 0 || !strings.HasPrefix(out, "ALLOW: allowed by ns[default]-policy[flaskapp-viewers]-rule[0]\n  evaluated: sidecar inbound, listener virtualInbound") {
		t.Fatalf("explain GET: %d %q %s", code, out, stderr)
	}
	code, out, _ = run(t, append([]string{"policy", "explain", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep", "--method", "DELETE"}, base...)...)
	if code != 0 || !strings.HasPrefix(out, "DENY: no ALLOW policy matches") {
		t.Fatalf("explain DELETE: %d %q", code, out)
	}
	code, out, _ = run(t, append([]string{"policy", "compile", "--kind", "authz", "-o", "json"}, base...)...)
	if code != 0 || !strings.Contains(out, `"name": "envoy.filters.http.rbac"`) || !strings.Contains(out, "ns[default]-policy[flaskapp-viewers]-rule[0]") {
		t.Fatalf("compile authz: %d %s", code, out)
	}
	code, out, _ = run(t, append([]string{"policy", "compile", "--kind", "authz", "--tcp"}, base...)...)
	if code != 0 || !strings.Contains(out, "envoy.filters.network.rbac") {
		t.Fatalf("compile authz --tcp: %d %s", code, out)
	}
	// migrate writes AuthorizationPolicies warden itself accepts.
	code, out, stderr = run(t, "policy", "migrate", "-f", examples, "--service-labels", "flaskapp.default.svc.cluster.local=app=flaskapp")
	if want := "policy migrate: ServiceRole default/flaskapp-viewer rule 0: paths are now matched without the query string\n"; code != 0 || stderr != want {
		t.Fatalf("migrate: %d %q, want %q", code, stderr, want)
	}
	migrated := filepath.Join(t.TempDir(), "migrated.yaml")
	os.WriteFile(migrated, []byte(out), 0o644)
	code, out, stderr = run(t, "policy", "explain", "-f", migrated, "--labels", "app=flaskapp", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep", "--method", "GET")
	if code != 0 || !strings.HasPrefix(out, "ALLOW: allowed by ns[default]-policy[sleep-views-flaskapp-0]-rule[0]\n") {
		t.Fatalf("explain on migrated: %d %q %s", code, out, stderr)
	}
}

// The mesh-wide authorization flags: trust-domain aliases and path
// normalisation reach policy explain (and serve's generated listeners).
func TestPolicyExplainMeshFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep, namespace: default}
spec:
  rules: [{from: [{source: {principals: [old.example/ns/default/sa/sleep]}}]}]
`), 0o644)
	base := []string{"policy", "explain", "-f", dir, "--trust-domain", "new.example", "--method", "GET"}
	explain := func(extra ...string) string {
		t.Helper()
		_, out, stderr := run(t, append(append([]string{}, base...), extra...)...)
		return out + stderr
	}
	if out := explain("--source-principal", "spiffe://new.example/ns/default/sa/sleep", "--path", "/x"); !strings.HasPrefix(out, "DENY") {
		t.Errorf("without the alias: %s", out)
	}
	if out := explain("--trust-domain-alias", "old.example", "--source-principal", "spiffe://new.example/ns/default/sa/sleep", "--path", "/x"); !strings.HasPrefix(out, "ALLOW: allowed by ns[default]-policy[sleep]-rule[0]") {
		t.Errorf("with the alias: %s", out)
	}
	alias := []string{"--trust-domain-alias", "old.example", "--source-principal", "spiffe://old.example/ns/default/sa/sleep"}
	if out := explain(append(alias, "--path", "/x/../admin")...); !strings.HasPrefix(out, "DENY: denied by ns[default]-policy[deny-admin]-rule[0]") {
		t.Errorf("dot segments under BASE: %s", out)
	}
	if out := explain(append(alias, "--path", "//admin")...); !strings.HasPrefix(out, "ALLOW") {
		t.Errorf("double slash under BASE (Istio's default keeps it): %s", out)
	}
	if out := explain(append(alias, "--path", "//admin", "--path-normalization", "MERGE_SLASHES")...); !strings.HasPrefix(out, "DENY") {
		t.Errorf("double slash under MERGE_SLASHES: %s", out)
	}
	if code, _, stderr := run(t, append(append([]string{}, base...), "--path-normalization", "SOME")...); code != 2 || !strings.Contains(stderr, `path normalization "SOME" is not one of BASE, NONE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES`) {
		t.Errorf("bad mode: %d %s", code, stderr)
	}
}

// --services takes names or FQDNs: a legacy Policy targets the short
// name, a ServiceRole the FQDN, and either spelling reaches both.
func TestPolicyServicesByNameOrFQDN(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(`apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: flaskapp-strict, namespace: default}
spec: {targets: [{name: flaskapp}], peers: [{mtls: {}}]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: viewer, namespace: default}
spec: {rules: [{services: [flaskapp.default.svc.cluster.local], methods: [GET]}]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: all, namespace: default}
spec: {subjects: [{user: '*'}], roleRef: {kind: ServiceRole, name: viewer}}
`), 0o644)
	for _, svc := range []string{"flaskapp", "flaskapp.default.svc.cluster.local"} {
		_, out, stderr := run(t, "policy", "check", "-f", dir, "--services", svc, "--port", "http:8080")
		if !strings.Contains(out, "port 8080: STRICT (targeted Policy default/flaskapp-strict)") {
			t.Errorf("--services %s, authentication: %s%s", svc, out, stderr)
		}
		_, out, stderr = run(t, "policy", "explain", "-f", dir, "--services", svc, "--method", "GET", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep")
		if !strings.HasPrefix(out, "ALLOW: allowed by ns[default]-policy[all]-rule[0]") {
			t.Errorf("--services %s, authorization: %s%s", svc, out, stderr)
		}
	}
}

// TestPolicyCheckReportsEveryProblem: one run of policy check names every
// invalid object of every file, every authorization compiler report
// (whichever workload the policy selects) and a request principal that
// cannot match, with the value to write; errors exit 1, warnings exit 0
// unless --strict; a directory without objects is an error naming -f.
func TestPolicyCheckReportsEveryProblem(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files := map[string]string{
		"a.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: headers, namespace: default}
spec:
  selector: {matchLabels: {app: other}}
  rules:
  - when:
    - key: request.header[x-user]
      values: [alice]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bad, namespace: default}
spec: {mtls: {mode: STRICTEST}}
`,
		"b.yaml": `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: items, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/*/items"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: default}
spec:
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.example.com*"]}}]}]
`,
		"c.yaml": "apiVersion: security.istio.io/v1\nkind: [\n",
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, out, stderr := run(t, "policy", "check", "-f", dir, "--labels", "app=flaskapp")
	want := "error: " + filepath.Join(dir, "a.yaml") + `: api: document 2 (PeerAuthentication default/bad): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT
error: ` + filepath.Join(dir, "c.yaml") + `: api: document 1: yaml: line 2: did not find expected node content
3 objects valid, 2 problems (serve --config-dir refuses the directory until they are fixed)
port 8080: PERMISSIVE (default (no policy sets a mode))
authz: AuthorizationPolicy default/headers rule 0: when[0]: unknown key "request.header[x-user]"; rule dropped (ALLOW is narrowed, never widened)
authz: AuthorizationPolicy default/items rule 0: operation.paths: path "/api/*/items": * is allowed only at the start or the end (use {*} or {**} for segments); value ignored
authz: AuthorizationPolicy default/jwt rule 0: source.requestPrincipals: "https://issuer.example.com*" means issuer "https:/" and a subject starting "issuer.example.com" (Istio splits issuer and subject at the last "/"), which no token has; for any subject of issuer https://issuer.example.com write "https://issuer.example.com/*"
`
	if code != 1 || out != want || stderr != "warden policy check: "+dir+": 2 problems\n" {
		t.Fatalf("policy check: exit %d\n%s\nstderr %q\nwant exit 1:\n%s", code, out, stderr, want)
	}

	// Only warnings: exit 0, or 1 with --strict.
	os.Remove(filepath.Join(dir, "c.yaml"))
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(files["a.yaml"][:strings.Index(files["a.yaml"], "---")]), 0o644)
	if code, out, stderr = run(t, "policy", "check", "-f", dir); code != 0 || !strings.HasPrefix(out, "3 objects valid\n") || strings.Count(out, "authz: ") != 3 {
		t.Fatalf("warnings only: exit %d\n%s%s", code, out, stderr)
	}
	if code, _, stderr = run(t, "policy", "check", "--strict", "-f", dir); code != 1 || stderr != "warden policy check: "+dir+": 3 warnings (--strict)\n" {
		t.Fatalf("--strict: exit %d %q", code, stderr)
	}

	// No object: a wrong -f, not a mesh without policy.
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "README.md"), []byte("# not configuration\n"), 0o644)
	for _, cmd := range [][]string{{"policy", "check"}, {"policy", "compile"}, {"policy", "explain"}} {
		code, out, stderr = run(t, append(cmd, "-f", empty)...)
		if want := empty + " holds no configuration object (policy commands read its *.yaml, *.yml and *.json files, not subdirectories): check the -f path"; code != 1 || out != "" || !strings.Contains(stderr, want) {
			t.Errorf("%s on an empty directory: exit %d %q %q", cmd, code, out, stderr)
		}
	}
}
