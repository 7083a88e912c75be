package server_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/server"
)

// rawCodec sends protobuf messages and receives a frame's bytes without
// decoding them: a thousand simulated ztunnels in one process each
// scanning a push for a name, not holding 30,000 decoded workloads.
type rawCodec struct{}

// watchFrame is what a simulated ztunnel keeps of a response: whether it
// named want, and how many bytes came.
type watchFrame struct {
	want  *atomic.Pointer[[]byte] // read when the frame arrives
	seen  bool
	bytes int
}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) ([]byte, error) {
	return proto.Marshal(v.(proto.Message))
}
func (rawCodec) Unmarshal(data []byte, v any) error {
	f := v.(*watchFrame)
	f.bytes = len(data)
	if w := f.want.Load(); w != nil {
		f.seen = bytes.Contains(data, *w)
	}
	return nil
}

// benchMesh is pods pods on nodes nodes (one ztunnel pod on each), in
// 100 namespaces with a Service per 10 pods.
func benchMesh(pods, nodes int) ambient.Input {
	in := ambient.Input{}
	for n := 0; n < nodes; n++ {
		in.Pods = append(in.Pods, &ambient.Pod{Name: fmt.Sprintf("ztunnel-%d", n), Namespace: "istio-system", ServiceAccount: "ztunnel",
			NodeName: fmt.Sprintf("node-%d", n), IPs: []string{fmt.Sprintf("10.255.%d.%d", n/250, n%250+1)}, Phase: "Running", Ready: true})
	}
	for i := 0; i < pods; i++ {
		ns := fmt.Sprintf("ns-%d", i%100)
		app := fmt.Sprintf("app-%d", i/1000)
		in.Pods = append(in.Pods, &ambient.Pod{Name: fmt.Sprintf("%s-%d", app, i), Namespace: ns, ServiceAccount: app,
			NodeName: fmt.Sprintf("node-%d", i%nodes), IPs: []string{fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256)}, Phase: "Running", Ready: true,
			Labels: map[string]string{"app": app}, Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled"}})
	}
	for i := 0; i < pods/10; i++ {
		ns := fmt.Sprintf("ns-%d", i%100)
		app := fmt.Sprintf("app-%d", i*10/1000)
		in.Services = append(in.Services, &ambient.Service{Name: fmt.Sprintf("svc-%d", i), Namespace: ns, Selector: map[string]string{"app": app},
			ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, Ports: []ambient.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	}
	return in
}

// BenchmarkZtunnelPodCreation: 1,000 ztunnels (one per node, 100 with
// -short) subscribed by wildcard over delta ADS on loopback, a
// 30,000-pod mesh (3,000 with -short); per op a pod is created
// (SetAmbient) and the op ends when every ztunnel has received it.
// Reported: ms from SetAmbient to the last ztunnel (reach-ms), the
// SetAmbient compile and diff alone (compile-ms), and the heap each
// stream adds beyond the shared state (stream-KiB: heap with every
// stream open minus heap before, per stream; it includes the simulated
// ztunnel's own gRPC stream in this process, so the server's share is
// less).
func BenchmarkZtunnelPodCreation(b *testing.B) {
	pods, nodes := 30000, 1000
	if testing.Short() {
		pods, nodes = 3000, 100
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
	srv, err := server.New(ctx, server.Config{
		Identify:            func(context.Context) (spiffeid.ID, error) { return id, nil },
		TrustedNodeAccounts: xds.NodeAccounts{"istio-system/ztunnel": true},
	})
	if err != nil {
		b.Fatal(err)
	}
	in := benchMesh(pods, nodes)
	if err := srv.SetAmbient(in); err != nil {
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
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()

	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	const method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
	var want atomic.Pointer[[]byte]
	var reached sync.WaitGroup
	var pending atomic.Int64
	type ztunnel struct{ s grpc.ClientStream }
	zts := make([]ztunnel, nodes)
	var ready sync.WaitGroup
	sem := make(chan struct{}, 32) // streams connecting at once
	for n := 0; n < nodes; n++ {
		ready.Add(1)
		sem <- struct{}{}
		s, err := cc.NewStream(metadata.AppendToOutgoingContext(ctx, "x", "y"), desc, method)
		if err != nil {
			b.Fatal(err)
		}
		node := fmt.Sprintf("ztunnel~%s~ztunnel-%d.istio-system~istio-system.svc.cluster.local", in.Pods[n].IPs[0], n)
		if err := s.SendMsg(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: ambient.AddressType}); err != nil {
			b.Fatal(err)
		}
		zts[n] = ztunnel{s}
		go func() {
			first := true
			for {
				f := &watchFrame{want: &want}
				if err := s.RecvMsg(f); err != nil {
					return
				}
				if first {
					first = false
					<-sem
					ready.Done()
					continue
				}
				if f.seen && pending.Add(-1) >= 0 {
					reached.Done()
				}
			}
		}()
	}
	ready.Wait()
	// Twice: buffers pooled during the first answers survive one
	// collection in sync.Pool's victim cache.
	runtime.GC()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perStream := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(nodes) / 1024

	var reach, compile time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := &ambient.Pod{Name: fmt.Sprintf("new-%d", i), Namespace: "ns-1", ServiceAccount: "app-0", NodeName: "node-0",
			IPs: []string{fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)}, Phase: "Running", Ready: true, Labels: map[string]string{"app": "app-0"}}
		uid := []byte("Kubernetes//Pod/ns-1/" + p.Name)
		want.Store(&uid)
		pending.Store(int64(nodes))
		reached.Add(nodes)
		in.Pods = append(in.Pods, p)
		start := time.Now()
		if err := srv.SetAmbient(in); err != nil {
			b.Fatal(err)
		}
		compile += time.Since(start)
		done := make(chan struct{})
		go func() { reached.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			b.Fatalf("after a minute %d of %d ztunnels have not received the pod", pending.Load(), nodes)
		}
		reach += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(float64(reach.Milliseconds())/float64(b.N), "reach-ms")
	b.ReportMetric(float64(compile.Milliseconds())/float64(b.N), "compile-ms")
	b.ReportMetric(perStream, "stream-KiB")
	for _, z := range zts {
		_ = z.s.CloseSend()
	}
}
