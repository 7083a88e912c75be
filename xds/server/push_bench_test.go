package server_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/wardenmesh/warden/internal/bench"
	"github.com/wardenmesh/warden/xds/server"
)

// BenchmarkPushVirtualServiceEdit is 'warden bench xds' in one process:
// 1,000 Envoy-style proxies (100 with -short) on ADS over loopback, a
// 100-service mesh, and per op an edit of every VirtualService, from
// Apply (the debounce is not included) until every proxy has ACKed its
// new routes. The simulated proxies decode what they receive in this
// process too, so a CPU profile shows client work next to the server's.
func BenchmarkPushVirtualServiceEdit(b *testing.B) {
	proxies, services := 1000, 100
	if testing.Short() {
		proxies = 100
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/bench/sa/client")
	var acked sync.Map // node -> RDS version ACKed
	var newACKs atomic.Int64
	srv, err := server.New(ctx, server.Config{
		Identify: func(context.Context) (spiffeid.ID, error) { return id, nil },
		OnACK: func(node, typeURL, version string) {
			if typeURL != resource.RouteType {
				return
			}
			if prev, _ := acked.Swap(node, version); prev != version {
				newACKs.Add(1)
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	v1, svcs := bench.XDSMesh(services, "v1", false)
	v2, _ := bench.XDSMesh(services, "v2", false)
	if err := srv.Apply(v1, svcs); err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer(append(server.ServerOptions(), grpc.MaxConcurrentStreams(1<<20))...)
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	ready := make(chan struct{})
	failed := make(chan error, 1)
	go func() {
		failed <- bench.XDSProxies(ctx, lis.Addr().String(), proxies, func() { close(ready) })
	}()
	wait := func(what string, done func() bool) {
		deadline := time.After(5 * time.Minute)
		for !done() {
			select {
			case err := <-failed:
				b.Fatalf("%s: %v", what, err)
			case <-deadline:
				b.Fatalf("%s: timed out", what)
			case <-time.After(time.Millisecond):
			}
		}
	}
	wait("connect", func() bool {
		select {
		case <-ready: // every proxy has routes; wait for their ACKs
			return newACKs.Load() >= int64(proxies)
		default:
			return false
		}
	})
	want := newACKs.Load()
	for i := 0; b.Loop(); i++ {
		objs := v2
		if i%2 == 1 {
			objs = v1
		}
		if err := srv.Apply(objs, svcs); err != nil {
			b.Fatal(err)
		}
		want += int64(proxies)
		wait("push", func() bool { return newACKs.Load() >= want })
	}
}
