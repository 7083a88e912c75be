package server

import (
	"context"
	"testing"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestProxiesShareTheirScopesAnswers: what keeps a proxy's memory in the
// server from growing with the mesh. Two proxies of one namespace get
// answers holding the very same Any list, and the EDS names a proxy asks
// for are replaced by the configuration's own strings.
func TestProxiesShareTheirScopesAnswers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	s, err := New(ctx, Config{Identify: func(context.Context) (spiffeid.ID, error) { return id, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(FlaskappExample(t)); err != nil {
		t.Fatal(err)
	}
	cb := s.callbacks()
	var answers [2][]*discovery.DiscoveryResponse
	for i, node := range []string{"sidecar~10.9.0.1~a.default~default.svc.cluster.local", "sidecar~10.9.0.2~b.default~default.svc.cluster.local"} {
		streamID := int64(i + 1)
		if err := cb.OnStreamOpen(ctx, streamID, resource.AnyType); err != nil {
			t.Fatal(err)
		}
		for _, typeURL := range []string{resource.ClusterType, resource.EndpointType} {
			req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typeURL}
			if typeURL == resource.EndpointType {
				s.mu.Lock()
				ps := s.proxies[node]
				s.mu.Unlock()
				for _, m := range ps.built.out.lists[3].items {
					req.ResourceNames = append(req.ResourceNames, string([]byte(m.name))) // a copy, as decoding makes
				}
			}
			if err := cb.OnStreamRequest(streamID, req); err != nil {
				t.Fatal(err)
			}
			if typeURL == resource.EndpointType {
				s.mu.Lock()
				out := s.proxies[node].built.out
				s.mu.Unlock()
				for j, n := range req.ResourceNames {
					want := out.index[3][n].Resource.(*marshaled).name
					if unsafe.StringData(n) != unsafe.StringData(want) {
						t.Errorf("EDS name %d (%s) is the request's own copy, not the configuration's string", j, n)
					}
				}
			}
			sub := stream.NewSotwSubscription(req.GetResourceNames(), true)
			ch := make(chan cachev3.Response, 1)
			if _, err := s.cache.CreateWatch(req, &sub, ch); err != nil {
				t.Fatal(err)
			}
			r, err := (<-ch).GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Resources) == 0 {
				t.Fatalf("%s: empty answer", typeURL)
			}
			answers[i] = append(answers[i], r)
		}
	}
	for k := range answers[0] {
		a, b := answers[0][k].Resources, answers[1][k].Resources
		if len(a) != len(b) || &a[0] != &b[0] {
			t.Errorf("%s: the two proxies' answers hold different lists (%d and %d resources)", answers[0][k].TypeUrl, len(a), len(b))
		}
	}
}
