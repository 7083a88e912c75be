package xds_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

func loadMesh(t *testing.T, dir string) *xds.Mesh {
	t.Helper()
	objs, _, err := source.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return meshOf(t, objs)
}

// meshOf is the mesh of objs, their ServiceEntries as the registry.
func meshOf(t *testing.T, objs []api.Object) *xds.Mesh {
	t.Helper()
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := xds.NewMesh(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return mesh
}

// TestGoldenProxyConfig pins the full resource set of each kind of proxy
// in testdata/mesh (Envoy and proxyless gRPC, client and server), and
// checks every resource passes ValidateAll. The testdata/kube cases are
// Kubernetes manifests (loadKubeMesh).
func TestGoldenProxyConfig(t *testing.T) {
	meshes := map[string]*xds.Mesh{"testdata/mesh": loadMesh(t, "testdata/mesh"), "testdata/tcp": loadMesh(t, "testdata/tcp"),
		"testdata/scope": loadMesh(t, "testdata/scope"), "testdata/gateway": loadMesh(t, "testdata/gateway"),
		// Kubernetes Services (ClusterIPs, headless, appProtocol) mapped by the Kubernetes registry's code.
		"testdata/kube/headless.yaml": loadKubeMesh(t, "testdata/kube/headless.yaml"), "testdata/kube/port80.yaml": loadKubeMesh(t, "testdata/kube/port80.yaml"),
		"testdata/kube/port80-tcp-first.yaml": loadKubeMesh(t, "testdata/kube/port80-tcp-first.yaml"),
		"testdata/kube/jwks-mesh-issuer.yaml": loadKubeMesh(t, "testdata/kube/jwks-mesh-issuer.yaml")}
	for _, tc := range []struct {
		file, node, generator string
		servers               []string
		dir                   string
	}{
		{"envoy-sleep.json", "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, ""},
		{"envoy-flaskapp.json", "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, ""},
		{"grpc-sleep.json", "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local", xds.GeneratorGRPC, nil, ""},
		{"grpc-flaskapp-server.json", "sidecar~127.0.0.3~flaskapp-v2.default~default.svc.cluster.local", xds.GeneratorGRPC,
			[]string{xds.ServerListenerName + "127.0.0.3:8080"}, ""},
		{"envoy-tcp.json", "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/tcp"},
		{"envoy-scope-web.json", "sidecar~10.0.2.2~web.frontend~frontend.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/scope"},
		{"envoy-ingress-gateway.json", ingressNode, xds.GeneratorEnvoy, nil, "testdata/gateway"},
		{"envoy-egress-gateway.json", egressNode, xds.GeneratorEnvoy, nil, "testdata/gateway"},
		{"grpc-scope-web.json", "sidecar~10.0.2.2~web.frontend~frontend.svc.cluster.local", xds.GeneratorGRPC, nil, "testdata/scope"},
		{"envoy-kube-headless.json", "sidecar~10.0.0.4~sleep-7d9f8c6b5-x2x4q.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/kube/headless.yaml"},
		{"envoy-kube-port80.json", "sidecar~10.0.0.4~sleep-7d9f8c6b5-x2x4q.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/kube/port80.yaml"},
		{"envoy-kube-port80-tcp-first.json", "sidecar~10.0.0.5~bastion-5c8d7f9b4-q7w2m.default~default.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/kube/port80-tcp-first.yaml"},
		// Istio's TestJwtFilter "Mesh cluster as issuer" case: remote_jwks
		// through outbound|7443||jwt-token-issuer.mesh.svc.cluster.local.
		{"envoy-kube-jwks-mesh-issuer.json", "sidecar~10.0.1.5~httpbin-7b8c9d6f5-p3q4r.foo~foo.svc.cluster.local", xds.GeneratorEnvoy, nil, "testdata/kube/jwks-mesh-issuer.yaml"},
	} {
		if tc.dir == "" {
			tc.dir = "testdata/mesh"
		}
		mesh := meshes[tc.dir]
		t.Run(tc.file, func(t *testing.T) {
			p, err := xds.ParseNodeID(tc.node)
			if err != nil {
				t.Fatal(err)
			}
			p.Generator = tc.generator
			cfg, _, err := mesh.ProxyConfig(p, tc.servers)
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if len(cfg.Listeners) == 0 || len(cfg.Clusters) == 0 || len(cfg.Endpoints) == 0 {
				t.Fatalf("empty configuration: %d listeners, %d clusters, %d endpoints", len(cfg.Listeners), len(cfg.Clusters), len(cfg.Endpoints))
			}
			dump := map[string]any{"reports": cfg.Reports}
			for k, rs := range map[string][]types.Resource{"listeners": cfg.Listeners, "routes": cfg.Routes, "clusters": cfg.Clusters, "endpoints": cfg.Endpoints} {
				var list []json.RawMessage
				for _, r := range rs {
					b, err := protojson.Marshal(r)
					if err != nil {
						t.Fatal(err)
					}
					// protojson output is not stable byte for byte; re-encode.
					var v any
					if err := json.Unmarshal(b, &v); err != nil {
						t.Fatal(err)
					}
					b, _ = json.Marshal(v)
					list = append(list, b)
				}
				dump[k] = list
			}
			got, _ := json.MarshalIndent(dump, "", "  ")
			testkit.Golden(t, filepath.Join("testdata", tc.file), append(got, '\n'), "./xds")
		})
	}
}
