package nodeauth_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
)

// BenchmarkImpersonation is a ztunnel's certificate requests, in one
// process as ca/server's BenchmarkCreateCertificate: gRPC over TLS on
// loopback, its pod-bound token reviewed once by the real API server and
// then cached, CSR checks and signing. "own" asks for its own identity
// (the plain path every workload takes); "impersonated" for the identity
// of a pod on its node (ImpersonatedIdentity, node authorization against
// an index of 200 pods on 20 nodes besides the other tests'). The
// difference is node authorization's cost. cpu-µs/op is the process's
// CPU, both ends, per certificate.
func BenchmarkImpersonation(b *testing.B) {
	zns, app := apiserver.Namespace(b, "istio-system"), apiserver.Namespace(b, "app")
	zt := createPod(b, podSpec{"ztunnel-1", zns, "ztunnel", "node-0"})
	createPod(b, podSpec{"web-0", app, "web", "node-0"})
	for i := range 10 {
		apiserver.ServiceAccount(b, app, fmt.Sprintf("sa-%d", i))
	}
	var g errgroup.Group
	g.SetLimit(8)
	for i := range 200 {
		g.Go(func() error {
			_, err := apiserver.Client.CoreV1().Pods(app).Create(context.Background(), &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("filler-%d", i)},
				Spec: corev1.PodSpec{ServiceAccountName: fmt.Sprintf("sa-%d", i%10), NodeName: fmt.Sprintf("node-%d", i%20),
					Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
			}, metav1.CreateOptions{})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	idx := sharedPods(b)
	kubetest.Eventually(b, 30*time.Second, func() error {
		if n := idx.OnNode(app, "sa-9", "node-19"); n != 10 {
			return fmt.Errorf("%d of the last fillers indexed", n)
		}
		return nil
	})
	tok := podToken(b, zt)
	f := newCA(b, authorizer(b, "Kubernetes", nodeauth.Account{Namespace: zns, Name: "ztunnel"}))
	cl := f.client(b, nil)
	for _, mode := range []struct{ name, identity, asked string }{
		{"own", identity(zns, "ztunnel"), ""},
		{"impersonated", identity(app, "web"), identity(app, "web")},
	} {
		b.Run(mode.name, func(b *testing.B) {
			csrs := make([]string, 64)
			for i := range csrs {
				csrs[i], _ = ztunnelCSR(b, mode.identity)
			}
			if _, err := ask(context.Background(), cl, tok, "Kubernetes", mode.asked, csrs[0], 3600); err != nil {
				b.Fatal(err) // and the token's review is cached
			}
			b.SetParallelism(4)
			cpu0 := processCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := ask(context.Background(), cl, tok, "Kubernetes", mode.asked, csrs[i%len(csrs)], 3600); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAuthorize is node authorization alone: the checks of one
// impersonation against the index, without the transport or signing.
func BenchmarkAuthorize(b *testing.B) {
	zns, app := apiserver.Namespace(b, "istio-system"), apiserver.Namespace(b, "app")
	zt := createPod(b, podSpec{"ztunnel-1", zns, "ztunnel", "node-0"})
	createPod(b, podSpec{"web-0", app, "web", "node-0"})
	na := authorizer(b, "Kubernetes", nodeauth.Account{Namespace: zns, Name: "ztunnel"})
	caller := &server.Caller{ID: catest.ID(zns, "ztunnel"), Method: "tokenreview",
		Kubernetes: &server.KubernetesCaller{Namespace: zns, ServiceAccount: "ztunnel", PodName: zt.Name, PodUID: string(zt.UID)}}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(server.ClusterIDHeader, "Kubernetes"))
	md, _ := structpb.NewStruct(map[string]any{server.ImpersonatedIdentity: identity(app, "web")})
	req := &server.Request{Metadata: md}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := na.Authorize(ctx, caller, req); err != nil {
			b.Fatal(err)
		}
	}
}
