package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/server"
)

// startADS serves the flaskapp example over ADS on loopback; a stream's
// identity is the SPIFFE ID in its "x-test-id" metadata (the real server
// uses mTLS or tokens; this test is about what an identity may receive).
func startADS(t *testing.T, opts ...func(*server.Config)) (*server.Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := server.Config{Debounce: 10 * time.Millisecond, Identify: func(ctx context.Context) (spiffeid.ID, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get("x-test-id"); len(v) == 1 {
			return spiffeid.FromString(v[0])
		}
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no identity")
	}}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := server.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Apply(server.FlaskappExample(t)); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(server.ServerOptions()...)
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

// asID is a context whose streams startADS's server takes as id; it ends
// after timeout or with the test.
func asID(t *testing.T, id string, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-test-id", id), timeout)
	t.Cleanup(cancel)
	return ctx
}

func grpcNode(id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"GENERATOR": "grpc"})
	return &corev3.Node{Id: id, Metadata: md}
}

func TestGRPCClientGetsNamedListener(t *testing.T) {
	_, c := startADS(t)
	ctx := asID(t, "spiffe://cluster.local/ns/default/sa/sleep", 10*time.Second)
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

// recvErr reads from a stream until it fails.
func recvErr(s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

// TestStreamCannotActAsAnotherProxy: a stream authenticated as sleep may
// not name flaskapp's node (nor switch nodes mid-stream), and a node ID
// that isn't Istio's form is an InvalidArgument.
func TestStreamCannotActAsAnotherProxy(t *testing.T) {
	_, c := startADS(t)
	cases := []struct {
		name, id string
		nodes    []string
		code     codes.Code
		msg      string
	}{
		{"other workload", "spiffe://cluster.local/ns/default/sa/sleep", []string{"sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"},
			codes.PermissionDenied, "authenticated as spiffe://cluster.local/ns/default/sa/sleep and cannot receive the configuration of node sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local, which runs as spiffe://cluster.local/ns/default/sa/flaskapp"},
		{"other namespace", "spiffe://cluster.local/ns/prod/sa/sleep", []string{"sidecar~10.9.9.9~x.default~default.svc.cluster.local"},
			codes.PermissionDenied, "in namespace default"},
		{"switch node", "spiffe://cluster.local/ns/default/sa/sleep", []string{"sidecar~127.0.0.4~sleep.default~default.svc.cluster.local", "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"},
			codes.PermissionDenied, "cannot switch"},
		{"bad node ID", "spiffe://cluster.local/ns/default/sa/sleep", []string{"sleep"}, codes.InvalidArgument, "want 4 parts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := asID(t, tc.id, 10*time.Second)
			s, err := c.StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i, n := range tc.nodes {
				if err := s.Send(&discovery.DiscoveryRequest{Node: grpcNode(n), TypeUrl: resource.ListenerType}); err != nil {
					break
				}
				if i == 0 && len(tc.nodes) > 1 {
					if _, err := s.Recv(); err != nil {
						t.Fatalf("first node refused: %v", err)
					}
				}
			}
			err = recvErr(s)
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.msg)
			}
		})
	}
	// Without an identity the stream is refused outright.
	s, err := c.StreamAggregatedResources(context.Background())
	if err == nil {
		err = recvErr(s)
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no identity: got %v, want Unauthenticated", err)
	}
}

// TestEditPushesOnlyAffected: an AuthorizationPolicy edit selecting
// flaskapp changes flaskapp's listeners, not sleep's; a VirtualService
// edit changes everyone's routes.
func TestEditPushesOnlyAffected(t *testing.T) {
	srv, c := startADS(t)
	open := func(id, node string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		ctx := asID(t, id, 20*time.Second)
		s, err := c.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	fl := open("spiffe://cluster.local/ns/default/sa/flaskapp", "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local")
	sl := open("spiffe://cluster.local/ns/default/sa/sleep", "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local")
	// Receive the first listeners and ACK them, which opens the next watch.
	for _, s := range []discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient{fl, sl} {
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}
	// Both identities are in use (their secrets stay fresh); others not.
	for id, want := range map[string]bool{"spiffe://cluster.local/ns/default/sa/flaskapp": true, "spiffe://cluster.local/ns/default/sa/sleep": true, "spiffe://cluster.local/ns/default/sa/other": false} {
		if got := srv.InUse(spiffeid.RequireFromString(id)); got != want {
			t.Errorf("InUse(%s) = %v, want %v", id, got, want)
		}
	}
	objs, _, err := source.Load("../../docs/examples/flaskapp")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if ap, ok := o.(*api.AuthorizationPolicy); ok {
			ap.Spec.Rules[0].From[0].Source.Principals = append(ap.Spec.Rules[0].From[0].Source.Principals, "cluster.local/ns/default/sa/other")
		}
	}
	services, _ := xds.ServicesFromEntries(objs, "")
	if err := srv.Apply(objs, services); err != nil {
		t.Fatal(err)
	}
	// flaskapp gets a new LDS version at once; sleep gets nothing.
	got := make(chan string, 1)
	go func() {
		r, err := fl.Recv()
		if err == nil {
			got <- r.VersionInfo
		}
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("flaskapp was not pushed after an AuthorizationPolicy selecting it changed")
	}
	quiet := make(chan struct{})
	go func() {
		if _, err := sl.Recv(); err == nil {
			close(quiet)
		}
	}()
	select {
	case <-quiet:
		t.Fatal("sleep was pushed listeners for a policy that does not select it")
	case <-time.After(300 * time.Millisecond):
	}
}

// wireByName is the encoding go-control-plane gives each resource (the
// bytes a proxy receives), by resource name.
func wireByName(t *testing.T, rs []types.Resource) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, r := range rs {
		b, err := cachev3.MarshalResource(r)
		if err != nil {
			t.Fatal(err)
		}
		out[cachev3.GetResourceName(r)] = b
	}
	return out
}

// proxyConfig is what ProxyConfig says node should have, by type URL.
func proxyConfig(t *testing.T, srv *server.Server, node string) map[string]map[string][]byte {
	t.Helper()
	p, err := xds.ParseNodeID(node)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := srv.Mesh().ProxyConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]map[string][]byte{
		resource.ListenerType: wireByName(t, cfg.Listeners), resource.RouteType: wireByName(t, cfg.Routes),
		resource.ClusterType: wireByName(t, cfg.Clusters), resource.EndpointType: wireByName(t, cfg.Endpoints),
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// TestADSSendsProxyConfig: what an Envoy proxy receives over ADS is, byte
// for byte, the encoding of what ProxyConfig builds from scratch (the
// server shares and pre-encodes resources across proxies).
func TestADSSendsProxyConfig(t *testing.T) {
	srv, c := startADS(t)
	const node = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	ctx := asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second)
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := proxyConfig(t, srv, node)
	for _, typeURL := range []string{resource.ClusterType, resource.ListenerType, resource.EndpointType, resource.RouteType} {
		req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typeURL}
		if typeURL == resource.EndpointType || typeURL == resource.RouteType {
			req.ResourceNames = sortedKeys(want[typeURL])
		}
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.TypeUrl != typeURL {
			t.Fatalf("got %s, want %s", r.TypeUrl, typeURL)
		}
		got := map[string][]byte{}
		for _, a := range r.Resources {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			got[cachev3.GetResourceName(m)] = a.Value
		}
		if !maps.EqualFunc(got, want[typeURL], bytes.Equal) {
			t.Errorf("%s: got %v, want %v (or the same names with other contents)", typeURL, sortedKeys(got), sortedKeys(want[typeURL]))
		}
	}
}

// TestReportsLoggedOnce: a conflict the compilers report is logged once,
// however many pushes and proxies see it.
func TestReportsLoggedOnce(t *testing.T) {
	var logs syncBuf
	srv, c := startADS(t, func(cfg *server.Config) { cfg.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
	for _, node := range []string{"sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local", "sidecar~127.0.0.3~flaskapp-v2.default~default.svc.cluster.local"} {
		s, err := c.StreamAggregatedResources(asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ListenerType}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	objs, _, err := source.Load("../../docs/examples/flaskapp")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		objs = append(objs, &api.PeerAuthentication{Metadata: api.ObjectMeta{Name: name, Namespace: "default"}, Spec: api.PeerAuthenticationSpec{MTLS: &api.PeerMTLS{Mode: "STRICT"}}})
	}
	services, _ := xds.ServicesFromEntries(objs, "")
	for i := 0; i < 3; i++ {
		if err := srv.Apply(objs, services); err != nil {
			t.Fatal(err)
		}
		srv.JWTKeysChanged() // recompiles every proxy again
	}
	const want = "2 namespace-wide PeerAuthentications in default: using default/a"
	if n := strings.Count(logs.String(), want); n != 1 {
		t.Fatalf("conflict logged %d times, want once:\n%s", n, logs.String())
	}
}

// syncBuf is the shared concurrent-safe buffer.
type syncBuf = testkit.Buffer
