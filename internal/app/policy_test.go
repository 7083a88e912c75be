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
