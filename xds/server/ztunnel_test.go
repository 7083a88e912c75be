package server_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
	"github.com/wardenmesh/warden/xds/server"
)

const (
	ztunnelID   = "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
	ztunnelNode = "ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
	// pushBound is how soon a registry change must reach a ztunnel on
	// loopback (SetAmbient is not debounced).
	pushBound = time.Second
)

func ztunnelPod() *ambient.Pod {
	return &ambient.Pod{Name: "ztunnel-abc", Namespace: "istio-system", ServiceAccount: "ztunnel", IPs: []string{"10.0.0.100"}, NodeName: "node-a", Phase: "Running", Ready: true}
}

func appPod(name, ip string, ready bool) *ambient.Pod {
	return &ambient.Pod{Name: name, Namespace: "shop", ServiceAccount: "web", IPs: []string{ip}, NodeName: "node-a", Phase: "Running", Ready: ready,
		Labels: map[string]string{"app": "web"}, Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled"}}
}

func startZtunnelADS(t *testing.T) (*server.Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	return startADS(t, func(c *server.Config) {
		c.TrustedNodeAccounts = xds.NodeAccounts{"istio-system/ztunnel": true}
		c.ClusterID = "c1"
	})
}

// ztClient is a ztunnel's delta stream, read by a goroutine so that a
// test can wait for a response with a deadline.
type ztClient struct {
	t    *testing.T
	s    discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node *corev3.Node
	resp chan *discovery.DeltaDiscoveryResponse
	err  chan error
}

func openZtunnel(t *testing.T, c discovery.AggregatedDiscoveryServiceClient, id, node string, meta map[string]any) *ztClient {
	t.Helper()
	s, err := c.DeltaAggregatedResources(asID(t, id, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(meta)
	z := &ztClient{t: t, s: s, resp: make(chan *discovery.DeltaDiscoveryResponse, 16), err: make(chan error, 1)}
	// Every request carries the node, as ztunnel's do on the first.
	z.node = &corev3.Node{Id: node, Metadata: md}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				z.err <- err
				return
			}
			z.resp <- r
		}
	}()
	return z
}

func (z *ztClient) send(r *discovery.DeltaDiscoveryRequest) {
	z.t.Helper()
	r.Node = z.node
	if err := z.s.Send(r); err != nil {
		z.t.Fatal(err)
	}
}

// next waits up to d for a response of typeURL and ACKs it.
func (z *ztClient) next(typeURL string, d time.Duration) *discovery.DeltaDiscoveryResponse {
	z.t.Helper()
	select {
	case r := <-z.resp:
		if r.TypeUrl != typeURL {
			z.t.Fatalf("got a %s response, want %s", r.TypeUrl, typeURL)
		}
		z.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: r.Nonce})
		return r
	case err := <-z.err:
		z.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
		z.t.Fatalf("no %s response within %s", typeURL, d)
	}
	return nil
}

// ended waits for the stream to end and returns its status.
func (z *ztClient) ended(d time.Duration) *status.Status {
	z.t.Helper()
	for {
		select {
		case <-z.resp:
		case err := <-z.err:
			return status.Convert(err)
		case <-time.After(d):
			z.t.Fatalf("the stream did not end within %s", d)
		}
	}
}

func workloads(t *testing.T, r *discovery.DeltaDiscoveryResponse) map[string]*workloadapi.Workload {
	t.Helper()
	out := map[string]*workloadapi.Workload{}
	for _, res := range r.Resources {
		var a workloadapi.Address
		if err := proto.Unmarshal(res.Resource.Value, &a); err != nil {
			t.Fatal(err)
		}
		if res.Resource.TypeUrl != ambient.AddressType {
			t.Errorf("resource %s is a %s", res.Name, res.Resource.TypeUrl)
		}
		out[res.Name] = a.GetWorkload()
	}
	return out
}

func names[V any](m map[string]V) []string {
	l := sortedKeys(m)
	return l
}

// TestZtunnelDelta: ztunnel subscribes by wildcard and on demand (by name
// and by address) and sees a pod's creation, readiness and deletion,
// each within pushBound, and only the resources that changed.
func TestZtunnelDelta(t *testing.T) {
	srv, c := startZtunnelADS(t)
	pods := []*ambient.Pod{ztunnelPod(), appPod("web-1", "10.1.0.1", true)}
	if err := srv.SetAmbient(ambient.Input{Pods: pods}); err != nil {
		t.Fatal(err)
	}
	wild := openZtunnel(t, c, ztunnelID, ztunnelNode, map[string]any{"CLUSTER_ID": "c1"})
	wild.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	got := workloads(t, wild.next(ambient.AddressType, pushBound))
	if want := []string{"c1//Pod/istio-system/ztunnel-abc", "c1//Pod/shop/web-1"}; !slices.Equal(names(got), want) {
		t.Fatalf("wildcard: %v, want %v", names(got), want)
	}
	wild.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AuthorizationType})
	if r := wild.next(ambient.AuthorizationType, pushBound); len(r.Resources) != 0 {
		t.Fatalf("authorizations %v, want none", r.Resources)
	}

	demand := openZtunnel(t, c, ztunnelID, ztunnelNode, nil)
	demand.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, ResourceNamesSubscribe: []string{"/10.1.0.1", "c1//Pod/shop/web-2"}})
	r := demand.next(ambient.AddressType, pushBound)
	if got := workloads(t, r); !slices.Equal(names(got), []string{"c1//Pod/shop/web-1"}) || !slices.Equal(r.Resources[0].Aliases, []string{"/10.1.0.1"}) {
		t.Fatalf("on demand: %v (aliases %v), want web-1 by its address", names(got), r.Resources[0].Aliases)
	}
	if !slices.Equal(r.RemovedResources, []string{"c1//Pod/shop/web-2"}) {
		t.Fatalf("on demand: removed %v, want the pod that does not exist yet", r.RemovedResources)
	}

	step := func(what string, pods []*ambient.Pod, check func(r *discovery.DeltaDiscoveryResponse) string) {
		t.Helper()
		start := time.Now()
		if err := srv.SetAmbient(ambient.Input{Pods: pods}); err != nil {
			t.Fatal(err)
		}
		for _, z := range []*ztClient{wild, demand} {
			r := z.next(ambient.AddressType, pushBound)
			if msg := check(r); msg != "" {
				t.Fatalf("%s: %s", what, msg)
			}
		}
		t.Logf("%s reached both streams in %s", what, time.Since(start))
	}
	one := func(status workloadapi.WorkloadStatus) func(r *discovery.DeltaDiscoveryResponse) string {
		return func(r *discovery.DeltaDiscoveryResponse) string {
			got := workloads(t, r)
			if w := got["c1//Pod/shop/web-2"]; len(got) != 1 || w == nil || w.Status != status || len(r.RemovedResources) != 0 {
				return "got " + strings.Join(names(got), ",") + " removed " + strings.Join(r.RemovedResources, ",") + ", want web-2 alone, " + status.String()
			}
			return ""
		}
	}
	step("creation", append(pods, appPod("web-2", "10.1.0.2", false)), one(workloadapi.WorkloadStatus_UNHEALTHY))
	step("readiness", append(pods, appPod("web-2", "10.1.0.2", true)), one(workloadapi.WorkloadStatus_HEALTHY))
	step("deletion", pods, func(r *discovery.DeltaDiscoveryResponse) string {
		if len(r.Resources) != 0 || !slices.Equal(r.RemovedResources, []string{"c1//Pod/shop/web-2"}) {
			return "got " + strings.Join(names(workloads(t, r)), ",") + " removed " + strings.Join(r.RemovedResources, ",") + ", want web-2 removed"
		}
		return ""
	})

	// A reconnecting ztunnel names what it holds: it gets the difference.
	again := openZtunnel(t, c, ztunnelID, ztunnelNode, nil)
	again.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType, InitialResourceVersions: map[string]string{
		"c1//Pod/shop/web-1": r.Resources[0].Version, "c1//Pod/shop/web-2": "old"}})
	r = again.next(ambient.AddressType, pushBound)
	if got := workloads(t, r); !slices.Equal(names(got), []string{"c1//Pod/istio-system/ztunnel-abc"}) || !slices.Equal(r.RemovedResources, []string{"c1//Pod/shop/web-2"}) {
		t.Fatalf("reconnect: %v removed %v; want the ztunnel pod alone (web-1 is held at its version), web-2 removed", names(got), r.RemovedResources)
	}
}

// TestZtunnelUnencodableResourceLeftOut: a resource that cannot be
// encoded (a label that is not UTF-8, which the API server would never
// admit but an unvalidated source could give) is left out and named,
// and every other resource is still served (FuzzAmbientCompile found
// it; before, one such pod stopped every ztunnel update).
func TestZtunnelUnencodableResourceLeftOut(t *testing.T) {
	srv, c := startZtunnelADS(t)
	bad := appPod("bad-1", "10.1.0.9", true)
	bad.Labels = map[string]string{"app": "\xe2ew"}
	err := srv.SetAmbient(ambient.Input{Pods: []*ambient.Pod{ztunnelPod(), appPod("web-1", "10.1.0.1", true), bad}})
	if err == nil || !strings.Contains(err.Error(), "c1//Pod/shop/bad-1") {
		t.Fatalf("SetAmbient: %v, want an error naming the pod left out", err)
	}
	z := openZtunnel(t, c, ztunnelID, ztunnelNode, nil)
	z.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	if got, want := names(workloads(t, z.next(ambient.AddressType, pushBound))), []string{"c1//Pod/istio-system/ztunnel-abc", "c1//Pod/shop/web-1"}; !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
}

// TestZtunnelRefused: only a trusted node account, in its own namespace
// and cluster, is served as ztunnel.
func TestZtunnelRefused(t *testing.T) {
	srv, c := startZtunnelADS(t)
	if err := srv.SetAmbient(ambient.Input{Pods: []*ambient.Pod{ztunnelPod()}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, node string
		meta           map[string]any
		want           string
	}{
		{"workload identity", "spiffe://cluster.local/ns/shop/sa/web", "ztunnel~10.1.0.1~web-1.shop~shop.svc.cluster.local", nil,
			"xds: shop/web is not a trusted node account (--trusted-node-accounts istio-system/ztunnel); only ztunnel's service account receives the mesh's workloads and policies"},
		{"other trust domain", "spiffe://evil.example/ns/istio-system/sa/ztunnel", ztunnelNode, nil,
			"xds: spiffe://evil.example/ns/istio-system/sa/ztunnel is not a workload identity of trust domain cluster.local; ztunnel streams must be opened as a trusted node account"},
		{"wrong cluster", ztunnelID, "ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local", map[string]any{"CLUSTER_ID": "c2"},
			"xds: node ztunnel~10.0.0.100~ztunnel-abc.istio-system~istio-system.svc.cluster.local is in cluster c2 (metadata CLUSTER_ID), but this control plane serves cluster c1"},
		{"wrong address", ztunnelID, "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local", nil,
			"xds: pod istio-system/ztunnel-abc of node ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local is not at 10.0.0.9 (its addresses: 10.0.0.100)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := openZtunnel(t, c, tc.id, tc.node, tc.meta)
			z.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
			st := z.ended(pushBound)
			if st.Code() != codes.PermissionDenied || st.Message() != tc.want {
				t.Errorf("got %v %q\nwant PermissionDenied %q", st.Code(), st.Message(), tc.want)
			}
		})
	}
}

// TestZtunnelStreamEndsWhenItsPodChanges: a stream stays bound to the
// identity that opened it; once the registry shows its pod running as
// another service account, the stream is ended.
func TestZtunnelStreamEndsWhenItsPodChanges(t *testing.T) {
	srv, c := startZtunnelADS(t)
	if err := srv.SetAmbient(ambient.Input{Pods: []*ambient.Pod{ztunnelPod()}}); err != nil {
		t.Fatal(err)
	}
	z := openZtunnel(t, c, ztunnelID, ztunnelNode, nil)
	z.send(&discovery.DeltaDiscoveryRequest{TypeUrl: ambient.AddressType})
	z.next(ambient.AddressType, pushBound)
	moved := ztunnelPod()
	moved.ServiceAccount = "impostor"
	if err := srv.SetAmbient(ambient.Input{Pods: []*ambient.Pod{moved}}); err != nil {
		t.Fatal(err)
	}
	st := z.ended(pushBound)
	want := "xds: pod istio-system/ztunnel-abc of node " + ztunnelNode + " runs as service account impostor, not ztunnel"
	if st.Code() != codes.PermissionDenied || st.Message() != want {
		t.Errorf("got %v %q, want PermissionDenied %q", st.Code(), st.Message(), want)
	}
}

// A ztunnel on state-of-the-world ADS is told to use delta.
func TestZtunnelNeedsDelta(t *testing.T) {
	_, c := startZtunnelADS(t)
	s, err := c.StreamAggregatedResources(asID(t, ztunnelID, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: ztunnelNode}, TypeUrl: ambient.AddressType}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "ztunnel is served on DeltaAggregatedResources only") {
		t.Errorf("got %v", err)
	}
}
