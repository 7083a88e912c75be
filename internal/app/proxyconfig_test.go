package app_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestProxyConfigInterceptionMode: warden proxy-config shows a TPROXY
// sidecar what warden serve sends it (transparent virtual listeners,
// original_src), a REDIRECT one neither, and refuses NONE as serve does.
func TestProxyConfigInterceptionMode(t *testing.T) {
	const node = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	listeners := func(extra ...string) (int, string, string) {
		args := append([]string{"proxy-config", "--config-dir", "../../docs/examples/flaskapp", "--node", node, "-o", "json"}, extra...)
		return run(t, append(args, "listeners")...)
	}
	code, tproxy, stderr := listeners("--interception-mode", "TPROXY")
	if code != 0 || strings.Count(tproxy, `"transparent": true`) != 2 || !strings.Contains(tproxy, "envoy.filters.listener.original_src") {
		t.Fatalf("TPROXY: exit %d, want virtualOutbound and virtualInbound transparent and original_src:\n%s%s", code, tproxy, stderr)
	}
	code, redirect, stderr := listeners()
	if code != 0 || strings.Contains(redirect, `"transparent"`) || strings.Contains(redirect, "original_src") || !strings.Contains(redirect, "virtualInbound") {
		t.Fatalf("REDIRECT (the default): exit %d:\n%s%s", code, redirect, stderr)
	}
	if code, _, stderr := listeners("--interception-mode", "NONE"); code == 0 || !strings.Contains(stderr, `INTERCEPTION_MODE "NONE" (a sidecar without iptables) is not served`) {
		t.Fatalf("NONE: exit %d:\n%s", code, stderr)
	}
}

// TestProxyConfigJwksCluster: Istio's TestJwtFilter case "JWT policy with
// Mesh cluster as issuer" through warden proxy-config: the jwksUri
// http://jwt-token-issuer.mesh:7443/jwks names the service
// jwt-token-issuer in namespace mesh, and the remote_jwks cluster of
// httpbin's jwt_authn is one of the clusters httpbin is sent. A bare name
// resolves to no service: its cluster is not among them, and proxy-config
// warns.
func TestProxyConfigJwksCluster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("services.yaml", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: jwt-token-issuer, namespace: mesh}
spec:
  hosts: [jwt-token-issuer]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7443, name: http}]
  endpoints: [{address: 10.0.3.7, labels: {app: jwt-token-issuer}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8000, name: http, targetPort: 8080}]
  endpoints: [{address: 10.0.1.5, labels: {app: httpbin}, serviceAccount: httpbin}]
`)
	policy := func(uri string) {
		write("policy.yaml", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh-issuer, namespace: foo}
spec:
  jwtRules: [{issuer: mesh cluster, jwksUri: "`+uri+`"}]
`)
	}
	all := func() (jwks string, clusters map[string]bool, warnings []string) {
		t.Helper()
		code, stdout, stderr := run(t, "proxy-config", "--config-dir", dir, "--node", "sidecar~10.0.1.5~httpbin-7b8c9d6f5-p3q4r.foo~foo.svc.cluster.local", "-o", "json", "all")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var out struct {
			Listeners []any `json:"listeners"`
			Clusters  []struct {
				Name string `json:"name"`
			} `json:"clusters"`
			Warnings []string `json:"warnings"`
		}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatal(err)
		}
		var found []string
		var walk func(v any)
		walk = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				if r, ok := x["remoteJwks"].(map[string]any); ok {
					found = append(found, r["httpUri"].(map[string]any)["cluster"].(string))
				}
				for _, y := range x {
					walk(y)
				}
			case []any:
				for _, y := range x {
					walk(y)
				}
			}
		}
		walk(out.Listeners) // each inbound filter chain (mTLS, plaintext) has the filter
		if found = slices.Compact(found); len(found) != 1 {
			t.Fatalf("remote_jwks clusters %q, want one", found)
		}
		clusters = map[string]bool{}
		for _, c := range out.Clusters {
			clusters[c.Name] = true
		}
		return found[0], clusters, out.Warnings
	}

	policy("http://jwt-token-issuer.mesh:7443/jwks")
	jwks, clusters, warnings := all()
	if jwks != "outbound|7443||jwt-token-issuer.mesh.svc.cluster.local" || !clusters[jwks] {
		t.Errorf("remote_jwks cluster %s: want outbound|7443||jwt-token-issuer.mesh.svc.cluster.local, one of the proxy's clusters %v", jwks, clusters)
	}
	for _, w := range warnings {
		if strings.Contains(w, "jwt-token-issuer") && !strings.Contains(w, "fetched in the clear") {
			t.Errorf("warning: %s", w)
		}
	}

	policy("http://jwt-token-issuer:7443/jwks")
	jwks, clusters, warnings = all()
	const want = `envoy.filters.http.jwt_authn names cluster outbound|7443||jwt-token-issuer for issuer "mesh cluster" (jwksUri http://jwt-token-issuer:7443/jwks), which this proxy is not sent: tokens of that issuer are refused (401)`
	if jwks != "outbound|7443||jwt-token-issuer" || clusters[jwks] || !slices.Contains(warnings, want) {
		t.Errorf("bare name: remote_jwks cluster %s (in the proxy's clusters: %v), warnings %q, want %q", jwks, clusters[jwks], warnings, want)
	}
}
