package xds_test

import (
	"reflect"
	"testing"

	"github.com/wardenmesh/warden/xds"
)

// TestMergeServicesKubernetesOwnsItsHost: a ServiceEntry naming a
// Kubernetes Service's host is dropped and reported, so it cannot
// redirect the cluster service's traffic; other entries are kept and the
// result is sorted by host.
func TestMergeServicesKubernetesOwnsItsHost(t *testing.T) {
	k := []*xds.Service{
		{Host: "b.default.svc.cluster.local", Endpoints: []xds.Endpoint{{Address: "10.0.0.2"}}},
		{Host: "d.default.svc.cluster.local"},
	}
	entries := []*xds.Service{
		{Host: "a.example.com", External: true},
		{Host: "b.default.svc.cluster.local", Endpoints: []xds.Endpoint{{Address: "203.0.113.9"}}},
		{Host: "c.default.svc.cluster.local"},
	}
	merged, shadowed := xds.MergeServices(k, entries)
	var hosts []string
	for _, s := range merged {
		hosts = append(hosts, s.Host)
	}
	if want := []string{"a.example.com", "b.default.svc.cluster.local", "c.default.svc.cluster.local", "d.default.svc.cluster.local"}; !reflect.DeepEqual(hosts, want) {
		t.Fatalf("hosts %v, want %v", hosts, want)
	}
	if merged[1] != k[0] || merged[1].Endpoints[0].Address != "10.0.0.2" {
		t.Fatalf("b is %+v, want the Kubernetes Service", merged[1])
	}
	if want := []string{"b.default.svc.cluster.local"}; !reflect.DeepEqual(shadowed, want) {
		t.Fatalf("shadowed %v, want %v", shadowed, want)
	}
	if merged, shadowed := xds.MergeServices(nil, nil); len(merged) != 0 || shadowed != nil {
		t.Fatalf("empty inputs: %v %v", merged, shadowed)
	}
}
