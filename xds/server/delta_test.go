package server_test

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds/server"
)

// deltaProxy is a raw delta ADS client that ACKs what it checks.
type deltaProxy struct {
	t *testing.T
	s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (p deltaProxy) send(req *discovery.DeltaDiscoveryRequest) {
	p.t.Helper()
	if err := p.s.Send(req); err != nil {
		p.t.Fatal(err)
	}
}

// expect receives the next response, checks it is of typeURL and carries
// exactly want (name -> encoding) and no removals, and ACKs it.
func (p deltaProxy) expect(typeURL string, want map[string][]byte) {
	p.t.Helper()
	r, err := p.s.Recv()
	if err != nil {
		p.t.Fatal(err)
	}
	if r.TypeUrl != typeURL {
		p.t.Fatalf("got a %s response, want %s", r.TypeUrl, typeURL)
	}
	got := map[string][]byte{}
	for _, res := range r.Resources {
		if res.Version == "" {
			p.t.Errorf("%s %s: no version", typeURL, res.Name)
		}
		got[res.Name] = res.GetResource().GetValue()
	}
	if !maps.EqualFunc(got, want, bytes.Equal) {
		p.t.Fatalf("%s: got %v, want %v (or the same names with other contents)", typeURL, sortedKeys(got), sortedKeys(want))
	}
	if len(r.RemovedResources) > 0 {
		p.t.Fatalf("%s: removed %v, want none", typeURL, r.RemovedResources)
	}
	p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: r.Nonce})
}

// changed is the part of next that differs from prev.
func changed(prev, next map[string][]byte) map[string][]byte {
	out := map[string][]byte{}
	for n, b := range next {
		if !bytes.Equal(prev[n], b) {
			out[n] = b
		}
	}
	return out
}

// TestDeltaADS: an Envoy proxy on incremental (delta) ADS receives its
// listeners and clusters by wildcard, then the endpoints and routes it
// names, and after each edit exactly the resources the edit changed: a
// VirtualService edit its route table, an AuthorizationPolicy selecting
// it its inbound listener.
func TestDeltaADS(t *testing.T) {
	srv, c := startADS(t)
	const node = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	ctx := asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second)
	s, err := c.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := deltaProxy{t: t, s: s}
	want := proxyConfig(t, srv, node)
	for _, typeURL := range []string{resource.ListenerType, resource.ClusterType} {
		if len(want[typeURL]) == 0 {
			t.Fatalf("flaskapp has no %s to test with", typeURL)
		}
		p.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typeURL})
		p.expect(typeURL, want[typeURL])
	}
	for _, typeURL := range []string{resource.EndpointType, resource.RouteType} {
		if len(want[typeURL]) == 0 {
			t.Fatalf("flaskapp has no %s to test with", typeURL)
		}
		p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: sortedKeys(want[typeURL])})
		p.expect(typeURL, want[typeURL])
	}

	edits := []struct {
		typeURL string
		edit    func(api.Object)
	}{
		{resource.RouteType, func(o api.Object) {
			if vs, ok := o.(*api.VirtualService); ok {
				vs.Spec.HTTP[0].Route[0].Destination.Subset = "v1"
			}
		}},
		{resource.ListenerType, func(o api.Object) {
			if ap, ok := o.(*api.AuthorizationPolicy); ok {
				ap.Spec.Rules[0].From[0].Source.Principals = append(ap.Spec.Rules[0].From[0].Source.Principals, "cluster.local/ns/default/sa/other")
			}
		}},
	}
	for i, e := range edits {
		// Fresh objects, as a source gives: edits so far applied.
		objs, services := server.FlaskappExample(t)
		for _, o := range objs {
			for _, e := range edits[:i+1] {
				e.edit(o)
			}
		}
		if err := srv.Apply(objs, services); err != nil {
			t.Fatal(err)
		}
		next := proxyConfig(t, srv, node)
		for typeURL := range next {
			if d := changed(want[typeURL], next[typeURL]); typeURL != e.typeURL && len(d) > 0 {
				t.Fatalf("the edit for %s changed %s %v too; the test expects one type", e.typeURL, typeURL, slices.Collect(maps.Keys(d)))
			}
		}
		d := changed(want[e.typeURL], next[e.typeURL])
		if len(d) == 0 || len(d) == len(next[e.typeURL]) && e.typeURL == resource.ListenerType {
			t.Fatalf("the edit for %s changed %d of %d resources; the test wants some, and for listeners not all", e.typeURL, len(d), len(next[e.typeURL]))
		}
		// The next response is that type's, with only what changed.
		p.expect(e.typeURL, d)
		want = next
	}
}

// TestSotWAndDeltaStreamsApart: go-control-plane numbers SotW and delta
// streams from 1 each, so the first of each kind share a number. Two
// proxies, one on each kind, with different identities, both get their
// configuration; and when the delta one leaves, the SotW one is still
// served (a push reaches it).
func TestSotWAndDeltaStreamsApart(t *testing.T) {
	srv, c := startADS(t)
	const sotwNode = "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local"
	const deltaNode = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	sotw, err := c.StreamAggregatedResources(asID(t, "spiffe://cluster.local/ns/default/sa/sleep", 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: sotwNode}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	r, err := sotw.Recv()
	if err != nil {
		t.Fatalf("SotW stream: %v", err)
	}
	ctx, leave := context.WithCancel(asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second))
	d, err := c.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := deltaProxy{t: t, s: d}
	p.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: deltaNode}, TypeUrl: resource.ClusterType})
	p.expect(resource.ClusterType, proxyConfig(t, srv, deltaNode)[resource.ClusterType])
	// The SotW stream is still its own: its ACK is taken as sleep's.
	if err := sotw.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	leave()
	// An edit that changes sleep's clusters reaches it.
	objs, services := server.FlaskappExample(t)
	for _, o := range objs {
		if dr, ok := o.(*api.DestinationRule); ok {
			dr.Spec.Subsets = dr.Spec.Subsets[:1]
		}
	}
	time.Sleep(200 * time.Millisecond) // the delta stream's close is handled
	if err := srv.Apply(objs, services); err != nil {
		t.Fatal(err)
	}
	r2, err := sotw.Recv()
	if err != nil {
		t.Fatalf("SotW stream after the delta stream left: %v", err)
	}
	if r2.VersionInfo == r.VersionInfo || len(r2.Resources) >= len(r.Resources) {
		t.Fatalf("after the edit sleep got %d clusters at %s, before %d at %s", len(r2.Resources), r2.VersionInfo, len(r.Resources), r.VersionInfo)
	}
}
