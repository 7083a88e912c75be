package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// XDSResult is what an ADS fan-out run measured in the server process.
type XDSResult struct {
	Proxies, Services int
	Debounce          time.Duration
	ConnectAll        time.Duration // until every proxy ACKed its first routes
	HeapPerProxy      float64       // bytes of live server heap per connected proxy
	Push              time.Duration // VirtualService edit until every proxy ACKed the new routes
	Sidecar           bool          // proxies scoped by a Sidecar to their namespace
	ConfigBytes       int           // one proxy's listeners, routes, clusters and endpoints, encoded
	Clusters          int           // one proxy's clusters
}

// Print writes the result for people.
func (r XDSResult) Print(w io.Writer) {
	fmt.Fprintf(w, "ADS proxies: %d Envoy-style clients (separate process) on a %d-service mesh\n", r.Proxies, r.Services)
	scope := "none: every proxy sees every service"
	if r.Sidecar {
		scope = "namespace bench only (\"./*\")"
	}
	fmt.Fprintf(w, "Sidecar scope: %s\n", scope)
	fmt.Fprintf(w, "config per proxy: %.1f KiB encoded, %d clusters\n", float64(r.ConfigBytes)/1024, r.Clusters)
	fmt.Fprintf(w, "all proxies configured (CDS, EDS, LDS, RDS ACKed): %s\n", r.ConnectAll.Round(time.Millisecond))
	fmt.Fprintf(w, "server heap per proxy: %.1f KiB\n", r.HeapPerProxy/1024)
	fmt.Fprintf(w, "VirtualService edit -> all proxies ACKed new routes: %s (debounce %s included)\n", r.Push.Round(time.Millisecond), r.Debounce)
}

// XDSMesh is services services, one in ten in namespace bench (where
// the simulated proxies run) and the others in namespace apps, two
// endpoints each (v1, v2), a DestinationRule with both subsets and a
// VirtualService per service sending everything to subset. With sidecar,
// a Sidecar scopes namespace bench's proxies to their own namespace.
func XDSMesh(services int, subset string, sidecar bool) ([]api.Object, []*xds.Service) {
	var objs []api.Object
	var svcs []*xds.Service
	if sidecar {
		objs = append(objs, &api.Sidecar{Metadata: api.ObjectMeta{Name: "default", Namespace: "bench"},
			Spec: api.SidecarSpec{Egress: []api.IstioEgressListener{{Hosts: []string{"./*"}}}}})
	}
	for i := range services {
		name := fmt.Sprintf("svc%03d", i)
		ns := "apps"
		if i%10 == 0 {
			ns = "bench"
		}
		host := name + "." + ns + ".svc.cluster.local"
		svcs = append(svcs, &xds.Service{Host: host, Name: name, Namespace: ns,
			Ports: []xds.ServicePort{{Number: 8080, Name: "http"}},
			Endpoints: []xds.Endpoint{
				{Address: fmt.Sprintf("10.1.%d.1", i), Labels: map[string]string{"app": name, "version": "v1"}, ServiceAccount: name},
				{Address: fmt.Sprintf("10.1.%d.2", i), Labels: map[string]string{"app": name, "version": "v2"}, ServiceAccount: name},
			}})
		meta := api.ObjectMeta{Name: name, Namespace: ns}
		objs = append(objs,
			&api.DestinationRule{Metadata: meta, Spec: api.DestinationRuleSpec{Host: name, Subsets: []api.Subset{
				{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}}}},
			&api.VirtualService{Metadata: meta, Spec: api.VirtualServiceSpec{Hosts: []string{name}, HTTP: []api.HTTPRoute{{
				Route: []api.HTTPRouteDestination{{Destination: api.Destination{Host: name, Subset: subset}}}}}}},
		)
	}
	return objs, svcs
}

// XDSConfig is one 'bench xds' run.
type XDSConfig struct {
	Proxies, Services int
	Debounce          time.Duration
	Sidecar           bool     // scope the proxies with a Sidecar
	Exe               string   // binary of the client half
	ClientArgs        []string // its arguments before --addr and --proxies
	// CPUProfile, when set, receives a CPU profile of this (server)
	// process from the VirtualService edit until every proxy ACKed it.
	CPUProfile io.Writer
}

// XDS serves ADS on loopback in this process, connects proxies from a
// child process (Exe ClientArgs...), and measures heap per proxy and the
// time from a VirtualService edit to every proxy's ACK of the new routes.
// Streams are not authenticated here (every proxy is an unknown workload
// of namespace bench); authentication is per stream open, not per push.
func XDS(ctx context.Context, cfg XDSConfig) (XDSResult, error) {
	proxies, services, debounce := cfg.Proxies, cfg.Services, cfg.Debounce
	res := XDSResult{Proxies: proxies, Services: services, Debounce: debounce, Sidecar: cfg.Sidecar}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/bench/sa/client")
	var acked sync.Map // node -> RDS version ACKed
	var newACKs atomic.Int64
	var target atomic.Value
	target.Store("")
	srv, err := xdsserver.New(ctx, xdsserver.Config{
		Identify: func(context.Context) (spiffeid.ID, error) { return id, nil },
		Debounce: debounce,
		OnACK: func(node, typeURL, version string) {
			if typeURL != resource.RouteType {
				return
			}
			prev, _ := acked.Swap(node, version)
			if t := target.Load().(string); t != "" && version != t && prev != version {
				newACKs.Add(1)
			}
		},
	})
	if err != nil {
		return res, err
	}
	objs, svcs := XDSMesh(services, "v1", cfg.Sidecar)
	if err := srv.Apply(objs, svcs); err != nil {
		return res, err
	}
	if res.ConfigBytes, res.Clusters, err = proxyConfigSize(objs, svcs); err != nil {
		return res, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	g := grpc.NewServer(append(xdsserver.ServerOptions(), grpc.MaxConcurrentStreams(1<<20))...)
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	base, _ := liveMem()
	cmd := exec.CommandContext(ctx, cfg.Exe, append(slices.Clone(cfg.ClientArgs), "--addr", lis.Addr().String(), "--proxies", fmt.Sprint(proxies))...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	for lines.Scan() && !strings.HasPrefix(lines.Text(), "READY") {
	}
	if lines.Err() != nil {
		return res, lines.Err()
	}
	res.ConnectAll = time.Since(start)
	heap, _ := liveMem()
	res.HeapPerProxy = (float64(heap) - float64(base)) / float64(proxies)

	// The initial route version every proxy ACKed.
	var initial string
	acked.Range(func(_, v any) bool { initial = v.(string); return false })
	target.Store(initial)
	edited, _ := XDSMesh(services, "v2", cfg.Sidecar)
	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return res, err
		}
		defer pprof.StopCPUProfile()
	}
	pushStart := time.Now()
	srv.Update(edited, svcs)
	deadline := time.After(60 * time.Second)
	for newACKs.Load() < int64(proxies) {
		select {
		case <-deadline:
			return res, fmt.Errorf("bench: only %d of %d proxies ACKed the edit within 60s", newACKs.Load(), proxies)
		case <-time.After(time.Millisecond):
		}
	}
	res.Push = time.Since(pushStart)
	if cfg.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	_, _ = io.WriteString(stdin, "done\n")
	return res, nil
}

// XDSClients runs XDSProxies and prints READY once every proxy has ACKed
// routes.
func XDSClients(ctx context.Context, addr string, proxies int, w io.Writer) error {
	return XDSProxies(ctx, addr, proxies, func() { fmt.Fprintln(w, "READY") })
}

// XDSProxies opens proxies ADS streams to addr, Envoy style: CDS and LDS
// wildcards, then EDS for the clusters and RDS for the listeners' route
// tables, ACKing every response. It calls ready once every proxy has
// ACKed routes, and returns when ctx ends or a stream fails.
func XDSProxies(ctx context.Context, addr string, proxies int, ready func()) error {
	conns := max(1, proxies/250)
	clients := make([]discovery.AggregatedDiscoveryServiceClient, conns)
	for i := range clients {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer c.Close()
		clients[i] = discovery.NewAggregatedDiscoveryServiceClient(c)
	}
	var routed, failed atomic.Int64
	errs := make(chan error, 1)
	for i := range proxies {
		go func() {
			err := oneProxy(ctx, clients[i%conns], i, func() {
				if routed.Add(1) == int64(proxies) {
					ready()
				}
			})
			if ctx.Err() == nil && failed.Add(1) == 1 {
				errs <- err
			}
		}()
	}
	select {
	case err := <-errs:
		return fmt.Errorf("bench: stream failed: %w", err)
	case <-ctx.Done():
		return nil
	}
}

func oneProxy(ctx context.Context, c discovery.AggregatedDiscoveryServiceClient, i int, routed func()) error {
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: benchNode(i)}
	send := func(typeURL, version, nonce string, names []string) error {
		return s.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names})
	}
	if err := send(resource.ClusterType, "", "", nil); err != nil {
		return err
	}
	if err := send(resource.ListenerType, "", "", nil); err != nil {
		return err
	}
	names := map[string][]string{}
	first := true
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		var follow string
		var want []string
		switch resp.TypeUrl {
		case resource.ClusterType:
			follow, want = resource.EndpointType, resourceNames(resp)
		case resource.ListenerType:
			follow = resource.RouteType
			for _, r := range resp.Resources {
				var l listenerv3.Listener
				var h hcmv3.HttpConnectionManager
				if r.UnmarshalTo(&l) == nil && len(l.FilterChains) > 0 && len(l.FilterChains[0].Filters) > 0 &&
					l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h) == nil && h.GetRds() != nil {
					want = append(want, h.GetRds().RouteConfigName)
				}
			}
		}
		if err := send(resp.TypeUrl, resp.VersionInfo, resp.Nonce, names[resp.TypeUrl]); err != nil {
			return err
		}
		if follow != "" && strings.Join(names[follow], ",") != strings.Join(want, ",") {
			names[follow] = want
			if err := send(follow, "", "", want); err != nil {
				return err
			}
		}
		if resp.TypeUrl == resource.RouteType && first {
			first = false
			routed()
		}
	}
}

func benchNode(i int) string {
	return fmt.Sprintf("sidecar~10.2.%d.%d~p%d.bench~bench.svc.cluster.local", i/250, i%250, i)
}

// proxyConfigSize is the encoded size of one simulated proxy's
// configuration (what it receives, without secrets) and its cluster count.
func proxyConfigSize(objs []api.Object, svcs []*xds.Service) (int, int, error) {
	mesh, err := xds.NewMesh(objs, svcs, xds.Options{})
	if err != nil {
		return 0, 0, err
	}
	p, err := xds.ParseNodeID(benchNode(0))
	if err != nil {
		return 0, 0, err
	}
	cfg, _, err := mesh.ProxyConfig(p, nil)
	if err != nil {
		return 0, 0, err
	}
	n := 0
	for _, set := range [][]types.Resource{cfg.Listeners, cfg.Routes, cfg.Clusters, cfg.Endpoints} {
		for _, r := range set {
			n += proto.Size(r)
		}
	}
	return n, len(cfg.Clusters), nil
}

func resourceNames(resp *discovery.DiscoveryResponse) []string {
	var out []string
	for _, r := range resp.Resources {
		if m, err := r.UnmarshalNew(); err == nil {
			if c, ok := m.(interface{ GetName() string }); ok {
				out = append(out, c.GetName())
			}
		}
	}
	return out
}
