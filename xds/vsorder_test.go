package xds_test

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
)

// TestVirtualServiceChoice: among the VirtualServices for a host (exact
// or by wildcard), one in the proxy's namespace wins, else the first by
// namespace/name, whichever kind of host names it.
func TestVirtualServiceChoice(t *testing.T) {
	vs := func(ns, name, host, timeout string) api.Object {
		return &api.VirtualService{Metadata: api.ObjectMeta{Name: name, Namespace: ns}, Spec: api.VirtualServiceSpec{Hosts: []string{host},
			HTTP: []api.HTTPRoute{{Route: []api.HTTPRouteDestination{{Destination: api.Destination{Host: "flaskapp.default.svc.cluster.local"}}}, Timeout: timeout}}}}
	}
	objs := []api.Object{
		vs("bbb", "exact", "flaskapp.default.svc.cluster.local", "2s"),
		vs("aaa", "wild", "*.default.svc.cluster.local", "1s"),
		vs("ccc", "exact", "flaskapp.default.svc.cluster.local", "3s"),
	}
	services := []*xds.Service{{Host: "flaskapp.default.svc.cluster.local", Name: "flaskapp", Namespace: "default",
		Ports: []xds.ServicePort{{Number: 80, Name: "http"}}}}
	mesh, err := xds.NewMesh(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for ns, want := range map[string]string{"zzz": "1s", "aaa": "1s", "bbb": "2s", "ccc": "3s"} {
		cfg, err := mesh.Outbound(xds.Scope{Namespace: ns, Generator: xds.GeneratorEnvoy})
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Routes[0].(*routev3.RouteConfiguration).VirtualHosts[0].Routes[0].GetRoute().GetTimeout().AsDuration().String()
		if got != want {
			t.Errorf("proxy in %s: timeout %s, want %s", ns, got, want)
		}
	}
}
