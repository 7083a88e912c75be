package xds_test

import (
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// TestJwksClusterIsTheProxys is Istio's TestJwtFilter case "JWT policy
// with Mesh cluster as issuer and remote jwks mode Envoy" with a
// Kubernetes Service as the registry (testdata/kube/jwks-mesh-issuer.yaml):
// httpbin's jwt_authn fetches the keys of http://jwt-token-issuer.mesh:7443/jwks
// through the Service's cluster, which is one of httpbin's clusters; a
// proxy whose Sidecar hides that Service has the same reference and no
// such cluster, which Dangling reports.
func TestJwksClusterIsTheProxys(t *testing.T) {
	t.Parallel()
	mesh := loadKubeMesh(t, "testdata/kube/jwks-mesh-issuer.yaml")
	const want = "outbound|7443||jwt-token-issuer.mesh.svc.cluster.local"
	for _, tc := range []struct {
		node     string
		dangling bool
	}{
		{"sidecar~10.0.1.5~httpbin-7b8c9d6f5-p3q4r.foo~foo.svc.cluster.local", false},
		{"sidecar~10.0.2.9~web-6c7d8e9f0-s5t6u.scoped~scoped.svc.cluster.local", true},
	} {
		cfg := viewOf(t, mesh, tc.node).cfg
		if len(cfg.Reports) != 1 || !strings.Contains(cfg.Reports[0], "is fetched in the clear") {
			t.Errorf("%s: reports %q, want only the http:// one (the host resolves)", tc.node, cfg.Reports)
		}
		refs, err := cfg.References()
		if err != nil {
			t.Fatal(err)
		}
		if len(refs) != 1 || refs[0].Cluster != want || refs[0].Filter != authn.JWTAuthnFilter ||
			refs[0].What != `issuer "mesh cluster" (jwksUri http://jwt-token-issuer.mesh:7443/jwks)` {
			t.Fatalf("%s: references %+v, want jwt_authn's %s", tc.node, refs, want)
		}
		dangling, err := cfg.Dangling()
		if err != nil {
			t.Fatal(err)
		}
		if (len(dangling) == 1) != tc.dangling || len(dangling) > 1 {
			t.Errorf("%s: dangling %+v, want dangling=%v", tc.node, dangling, tc.dangling)
		}
	}
}

// TestDanglingExtAuthz: a CUSTOM policy's ext_authz (HTTP and network)
// calls ext-authz|<provider>, a cluster warden does not serve (the
// bootstrap defines it), so Dangling lists it for both filters.
func TestDanglingExtAuthz(t *testing.T) {
	t.Parallel()
	objs, err := api.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  ports: [{number: 80, name: http}, {number: 5432, name: tcp-db}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {app: web}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := viewOf(t, meshOf(t, objs), "sidecar~10.0.0.1~web-1.default~default.svc.cluster.local").cfg
	dangling, err := cfg.Dangling()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dangling {
		got = append(got, d.Filter+" "+d.Cluster+" "+d.What)
	}
	want := []string{`envoy.filters.http.ext_authz ext-authz|opa CUSTOM provider "opa"`, `envoy.filters.network.ext_authz ext-authz|opa CUSTOM provider "opa"`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dangling:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
