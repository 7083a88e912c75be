package xds_test

import (
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
)

// FuzzProxyConfig: any decodable mesh and any node ID either give a clear
// error or configuration whose every resource passes ValidateAll; nothing
// panics. Seeds in testdata/fuzz/FuzzProxyConfig.
func FuzzProxyConfig(f *testing.F) {
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec: {hosts: [a], resolution: STATIC, ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1, serviceAccount: a}]}\n"),
		"sidecar~10.0.0.1~a.default~default.svc.cluster.local", true)
	f.Fuzz(func(t *testing.T, doc []byte, node string, grpc bool) {
		objs, err := api.Decode(doc)
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.Meta().Namespace == "" {
				o.Meta().Namespace = "default"
			}
		}
		services, err := xds.ServicesFromEntries(objs, "")
		if err != nil {
			return
		}
		mesh, err := xds.NewMesh(objs, services, xds.Options{})
		if err != nil {
			return
		}
		p, err := xds.ParseNodeID(node)
		if err != nil {
			return
		}
		// TPROXY for half the Envoy sidecars (the corpus's arguments
		// stay as they are).
		p.Transparent = !grpc && len(doc)%2 == 0
		var servers []string
		if grpc {
			p.Generator = xds.GeneratorGRPC
			servers = []string{xds.ServerListenerName + p.IP + ":80", xds.ServerListenerName + "garbage"}
		}
		cfg, _, err := mesh.ProxyConfig(p, servers)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("invalid configuration without an error: %v", err)
		}
	})
}
