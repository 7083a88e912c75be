package xds_test

import (
	"context"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
)

// startADS serves the flaskapp example over ADS on loopback; a stream's
// identity is the SPIFFE ID in its "x-test-id" metadata (the real server
// uses mTLS or tokens; this test is about what an identity may receive).
func startADS(t *testing.T) (*xds.Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv, err := xds.NewServer(ctx, xds.ServerConfig{Debounce: 10 * time.Millisecond, Identify: func(ctx context.Context) (spiffeid.ID, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("x-test-id"); len(v) == 1 {
			return spiffeid.FromString(v[0])
		}
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no identity")
	}})
	if err != nil {
		t.Fatal(err)
	}
	objs, _, err := source.Load("../docs/examples/flaskapp")
	if err != nil {
		t.Fatal(err)
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Apply(objs, services); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return srv, discovery.NewAggregatedDiscoveryServiceClient(cc)
}

func grpcNode(id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"GENERATOR": "grpc"})
	return &corev3.Node{Id: id, Metadata: md}
}

func TestGRPCClientGetsNamedListener(t *testing.T) {
	_, c := startADS(t)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-test-id", "spiffe://cluster.local/ns/default/sa/sleep"), 10*time.Second)
	defer cancel()
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: grpcNode("sidecar~127.0.0.4~sleep.default~default.svc.cluster.local"), TypeUrl: resource.ListenerType,
		ResourceNames: []string{"flaskapp.default.svc.cluster.local:8080"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 {
		t.Fatalf("got %d listeners, want 1", len(resp.Resources))
	}
}
