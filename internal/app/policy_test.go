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
	want := "9 objects valid\nport 8080: STRICT (mesh-level PeerAuthentication istio-system/default)\n"
	if code != 0 || out != want {
		t.Fatalf("policy check: %d\n%s%s\nwant:\n%s", code, out, stderr, want)
	}
	code, out, stderr = run(t, "policy", "compile", "--kind", "authn", "-f", examples, "--port", "8080", "-o", "yaml")
	if code != 0 || !strings.Contains(out, "require_client_certificate: true") || !strings.Contains(out, "name: ROOTCA") {
		t.Fatalf("policy compile: %d\n%s%s", code, out, stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: default}\nspec: {mtls: {mode: STRICTEST}}\n"), 0o644)
	code, _, stderr = run(t, "policy", "check", "-f", bad)
	if want := bad + `: api: document 1 (PeerAuthentication default/x): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`; code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("bad input: %d %q\nwant %q", code, stderr, want)
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
	if code != 0 || out != "ALLOW: allowed by ns[default]-policy[flaskapp-viewers]-rule[0]\n" {
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
	if code != 0 || stderr != "" {
		t.Fatalf("migrate: %d %s", code, stderr)
	}
	migrated := filepath.Join(t.TempDir(), "migrated.yaml")
	os.WriteFile(migrated, []byte(out), 0o644)
	code, out, stderr = run(t, "policy", "explain", "-f", migrated, "--labels", "app=flaskapp", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep", "--method", "GET")
	if code != 0 || out != "ALLOW: allowed by ns[default]-policy[sleep-views-flaskapp-0]-rule[0]\n" {
		t.Fatalf("explain on migrated: %d %q %s", code, out, stderr)
	}
}
