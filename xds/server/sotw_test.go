package server_test

import (
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

// TestSotWSubscriptionChanges walks the state-of-the-world rules the
// server keeps per stream (xDS protocol, "resource updates"): an ACK is
// not answered until something changes; a request for more names at the
// same version is answered at once with them; a request carrying a stale
// nonce is ignored; a NACK is not answered with the version it rejects;
// names the configuration lacks are left out; and a
// new stream is answered even when it already holds the current
// version (a reconnecting Envoy).
func TestSotWSubscriptionChanges(t *testing.T) {
	srv, c := startADS(t)
	const node = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	all := sortedKeys(proxyConfig(t, srv, node)[resource.EndpointType])
	if len(all) < 2 {
		t.Fatalf("the example gives %d endpoint names; the test needs two", len(all))
	}
	ctx := asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second)
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resps := make(chan *discovery.DiscoveryResponse, 8)
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				close(resps)
				return
			}
			resps <- r
		}
	}()
	send := func(version, nonce string, names ...string) {
		t.Helper()
		if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.EndpointType,
			VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(want ...string) *discovery.DiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-resps:
			if !ok {
				t.Fatal("stream ended")
			}
			var got []string
			for _, a := range r.Resources {
				m, err := a.UnmarshalNew()
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, cachev3.GetResourceName(m))
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("answered with %q, want %q", got, want)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer; want %q", want)
		}
		return nil
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case r := <-resps:
			t.Fatalf("%s was answered (version %s, %d resources)", what, r.GetVersionInfo(), len(r.GetResources()))
		case <-time.After(300 * time.Millisecond):
		}
	}

	send("", "", all[0], "outbound|1|nope|missing.default.svc.cluster.local")
	r := recv(all[0])
	send(r.VersionInfo, r.Nonce, all[0], "outbound|1|nope|missing.default.svc.cluster.local")
	quiet("an ACK")
	// More names at the same version: answered at once. (Until the next
	// answer any nonce is taken, as go-control-plane takes it.)
	send(r.VersionInfo, r.Nonce, all[:1+len(all)/2]...)
	old := r
	r = recv(all[:1+len(all)/2]...)
	if r.Nonce == "" || r.Nonce == old.Nonce {
		t.Fatalf("answer nonce %q after %q", r.Nonce, old.Nonce)
	}
	// A request carrying the nonce of an earlier answer is stale: the
	// client has not seen the last one yet.
	send(r.VersionInfo, old.Nonce, all...)
	quiet("a request with a stale nonce")
	send(r.VersionInfo, r.Nonce, all...)
	r = recv(all...)
	send(r.VersionInfo, r.Nonce, all...)
	quiet("the ACK of the wider subscription")
	// A NACK carries the version the proxy had before (here none): the
	// rejected one is not sent again until something changes.
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.EndpointType,
		ResponseNonce: r.Nonce, ResourceNames: all, ErrorDetail: &statuspb.Status{Code: 3, Message: "test: refused"}}); err != nil {
		t.Fatal(err)
	}
	quiet("a NACK")

	// Reconnect holding the current version.
	s2, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.EndpointType,
		VersionInfo: r.VersionInfo, ResourceNames: all}); err != nil {
		t.Fatal(err)
	}
	r2, err := s2.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Resources) != len(all) || r2.VersionInfo != r.VersionInfo {
		t.Fatalf("new stream got %d resources at %s; want %d at %s", len(r2.Resources), r2.VersionInfo, len(all), r.VersionInfo)
	}
}
