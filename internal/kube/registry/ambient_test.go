package registry_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// kubeBound is how soon a change in the API server must reach a
// subscribed ztunnel: the informer's watch, the feed and the push.
const kubeBound = 5 * time.Second

// createPod creates a pod and writes its status as a kubelet would
// (envtest runs none): its IP and Ready condition.
func createPod(t *testing.T, ns string, p *corev1.Pod, ip string, ready bool) {
	t.Helper()
	ctx := kubetest.Context(t)
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "example.org/app"}}
	created, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setStatus(t, created, ip, ready)
}

func setStatus(t *testing.T, p *corev1.Pod, ip string, ready bool) {
	t.Helper()
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}}
	if _, err := apiserver.Client.CoreV1().Pods(p.Namespace).UpdateStatus(kubetest.Context(t), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestAmbientFlowsToZtunnel: in Kubernetes mode, the registry's pods
// reach a ztunnel subscribed over delta ADS (real API server, real gRPC):
// a pod's creation, its readiness and its deletion, each within
// kubeBound; the ztunnel is served only as its own pod's service account.
func TestAmbientFlowsToZtunnel(t *testing.T) {
	ztNS := apiserver.Namespace(t, "zt")
	ns := apiserver.Namespace(t, "amb")
	ctx := kubetest.Context(t)
	apiserver.ServiceAccount(t, ztNS, "ztunnel")
	apiserver.ServiceAccount(t, ns, "web")
	createPod(t, ztNS, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-1"}, Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: "node-a"}}, "10.20.0.100", true)

	srv, err := xdsserver.New(ctx, xdsserver.Config{
		TrustedNodeAccounts: xds.NodeAccounts{ztNS + "/ztunnel": true},
		// Identity comes from the test's metadata; what is tested here is
		// the flow from the API server to the stream.
		Identify: func(context.Context) (spiffeid.ID, error) {
			return spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ztNS + "/sa/ztunnel"), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	kick := make(chan struct{}, 1)
	reg := &registry.Watcher{Client: apiserver.Client, OnChange: func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}}
	go func() { _ = reg.Run(ctx) }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
			}
			pods, svcs, nss := reg.Ambient()
			if err := srv.SetAmbient(ambient.Input{Pods: pods, Services: svcs, Namespaces: nss}); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-reg.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("registry did not sync")
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(xdsserver.ServerOptions()...)
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: fmt.Sprintf("ztunnel~10.20.0.100~ztunnel-1.%s~%s.svc.cluster.local", ztNS, ztNS)}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: ambient.AddressType}); err != nil {
		t.Fatal(err)
	}
	// held is what the ztunnel holds: uid -> workload.
	held := map[string]*workloadapi.Workload{}
	uid := "Kubernetes//Pod/" + ns + "/web-1"
	wait := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		deadline := time.After(kubeBound)
		for !cond() {
			got := make(chan *discovery.DeltaDiscoveryResponse, 1)
			errc := make(chan error, 1)
			go func() {
				r, err := stream.Recv()
				if err != nil {
					errc <- err
					return
				}
				got <- r
			}()
			select {
			case r := <-got:
				for _, res := range r.Resources {
					var a workloadapi.Address
					if err := proto.Unmarshal(res.Resource.Value, &a); err != nil {
						t.Fatal(err)
					}
					if w := a.GetWorkload(); w != nil {
						held[res.Name] = w
					}
				}
				for _, n := range r.RemovedResources {
					delete(held, n)
				}
				if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
					t.Fatal(err)
				}
			case err := <-errc:
				t.Fatalf("%s: stream ended: %v", what, err)
			case <-deadline:
				t.Fatalf("%s: not seen within %s; holding %v", what, kubeBound, slices.Sorted(func(yield func(string) bool) {
					for k := range held {
						if !yield(k) {
							return
						}
					}
				}))
			}
		}
		t.Logf("%s reached ztunnel in %s", what, time.Since(start))
	}
	wait("ztunnel's own pod", func() bool { return held["Kubernetes//Pod/"+ztNS+"/ztunnel-1"] != nil })

	createPod(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"app": "web"},
		Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled"}}, Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-b"}}, "10.20.1.1", false)
	wait("creation", func() bool {
		w := held[uid]
		return w != nil && w.Status == workloadapi.WorkloadStatus_UNHEALTHY && w.Node == "node-b" && w.TunnelProtocol == workloadapi.TunnelProtocol_HBONE
	})
	p, err := apiserver.Client.CoreV1().Pods(ns).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setStatus(t, p, "10.20.1.1", true)
	wait("readiness", func() bool { w := held[uid]; return w != nil && w.Status == workloadapi.WorkloadStatus_HEALTHY })
	if err := apiserver.Client.CoreV1().Pods(ns).Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	wait("deletion", func() bool { return held[uid] == nil })
}

// TestAmbientPodNamedPorts: a Service's named targetPort resolves to the
// pod's TCP container ports, of its containers and native sidecars only
// (Istio's FindPortName), after the informer's slimming.
func TestAmbientPodNamedPorts(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: "admin", ContainerPort: 9000},
		}}},
		InitContainers: []corev1.Container{
			{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001, Protocol: corev1.ProtocolTCP}}},
			{Name: "init", Ports: []corev1.ContainerPort{{Name: "setup", ContainerPort: 1, Protocol: corev1.ProtocolTCP}}},
		},
	}}
	slim, err := registry.SlimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	got := registry.AmbientPod(slim.(*corev1.Pod)).ContainerPorts
	want := map[string]uint32{"http": 8080, "admin": 9000, "proxy": 15001}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("named ports %v, want %v", got, want)
	}
}
