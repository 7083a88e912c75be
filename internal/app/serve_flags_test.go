package app_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// rootNamespacePolicies are one DENY policy without a selector in each of
// three namespaces: mesh-root (the root, with --root-namespace
// mesh-root), istio-system (the default root) and elsewhere.
const rootNamespacePolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root-deny, namespace: mesh-root}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-root]", values: [deny]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: istio-deny, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-istio]", values: [deny]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-deny, namespace: elsewhere}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-other]", values: [deny]}]}]
`

// TestServeRootNamespace: serve --root-namespace mesh-root makes
// mesh-root the mesh root namespace: its policy reaches flaskapp's
// listeners in default; istio-system's (the default root) and another
// namespace's do not.
func TestServeRootNamespace(t *testing.T) {
	m := startMeshWith(t, nil, map[string]string{"root.yaml": rootNamespacePolicies}, []string{"--root-namespace", "mesh-root"}, "default/flaskapp")
	root, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	tok, _ := os.ReadFile(filepath.Join(m.dir, "default-flaskapp.token"))
	ads, _ := openADS(t, m.addr, pool, string(tok))
	node := &corev3.Node{Id: "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	lds, err := ads.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, r := range lds.Resources {
		all = append(all, r.Value...)
	}
	for name, want := range map[string]bool{
		"ns[default]-policy[flaskapp-callers]-rule[0]": true, // the workload's own namespace
		"ns[mesh-root]-policy[root-deny]-rule[0]":      true,
		"ns[istio-system]-policy[istio-deny]-rule[0]":  false,
		"ns[elsewhere]-policy[other-deny]-rule[0]":     false,
	} {
		if got := bytes.Contains(all, []byte(name)); got != want {
			t.Errorf("flaskapp's listeners hold %s: %t, want %t", name, got, want)
		}
	}
}

// TestServeTokenAudiences: in standalone mode serve --token-audiences
// sets the audience a bearer token must carry, and --jwt-audiences, its
// former name, does the same.
func TestServeTokenAudiences(t *testing.T) {
	for _, flag := range []string{"--token-audiences", "--jwt-audiences"} {
		t.Run(strings.TrimPrefix(flag, "--"), func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			addr, _ := serve(t, data, flag, "mesh-ca")
			request := func(audience string) (int, string) {
				code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep", "--audience", audience)
				if code != 0 {
					t.Fatalf("token: %s", stderr)
				}
				tf := filepath.Join(dir, audience+".token")
				os.WriteFile(tf, []byte(tok), 0o600)
				code, _, stderr = run(t, "cert", "request", "--ca", addr, "--data-dir", data, "--token-file", tf, "--out", filepath.Join(dir, audience))
				return code, stderr
			}
			if code, stderr := request("mesh-ca"); code != 0 {
				t.Fatalf("a token for mesh-ca: exit %d %s", code, stderr)
			}
			code, stderr := request("istio-ca")
			if want := "authentication failed: jwt: token: invalid token: audience [istio-ca] does not include mesh-ca"; code == 0 || !strings.Contains(stderr, want) {
				t.Fatalf("a token for istio-ca (the default audience): exit %d %s, want %q", code, stderr, want)
			}
		})
	}
}
