package podcert_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/kube"
)

// apiserverRequests is the API server's apiserver_request_total summed
// over every label: the requests it has served.
func apiserverRequests(b *testing.B) float64 {
	b.Helper()
	raw, err := apiserver.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// BenchmarkPCRStorm is a kubelet restart storm: 1,000 pods on a node get
// their PodCertificateRequests created at once, with the node's
// credentials (NodeRestriction admits each), and warden's signer — with
// the deploy RBAC and warden's client rate limits (200 QPS, burst 400) —
// issues them. It reports requests issued per second, the p99 latency
// from a request's creation (as its creator saw it return) to its issue
// (as a watch saw it), the API server's request rate meanwhile, and the
// signer's retries. Run it alone:
//
//	go test -run '^$' -bench PCRStorm -benchtime 1x ./internal/kube/podcert/
func BenchmarkPCRStorm(b *testing.B) {
	const n = 1000
	ctx := context.Background()
	ns := apiserver.Namespace(b, "storm")
	sa := apiserver.ServiceAccount(b, ns, "app")
	node := apiserver.Node(b, "storm-"+ns)
	// The pods, created before the storm (not measured).
	pods := make([]*corev1.Pod, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			pods[i] = apiserver.Pod(b, ns, fmt.Sprintf("app-%04d", i), "app", node.Name, signer)
		})
	}
	wg.Wait()
	reqs := make([]*certv1.PodCertificateRequest, n)
	for i := range n {
		reqs[i] = request(b, pods[i], node.Node, sa, keyOf(b, "ECDSAP256"))
	}
	// The kubelets' side is not throttled on the client: the storm is
	// many kubelets at once.
	nodeCfg := rest.CopyConfig(node.Config)
	nodeCfg.QPS, nodeCfg.Burst = 5000, 5000
	nodeCS := kubernetes.NewForConfigOrDie(nodeCfg)

	a, _ := authority(b)
	s := startSigner(b, a)
	// Wait for the signer's informers (it logs once they have synced).
	for !strings.Contains(s.logs.String(), "signing pod certificate requests") {
		time.Sleep(10 * time.Millisecond)
	}

	// When each request is seen issued: an informer (a plain watch is
	// closed by the API server when it falls behind 2,000 events).
	var mu sync.Mutex
	issuedAt := map[string]time.Time{}
	done := make(chan struct{})
	seen := func(obj any) {
		r, ok := obj.(*certv1.PodCertificateRequest)
		if !ok || len(r.Status.Conditions) == 0 || r.Status.Conditions[0].Type != certv1.PodCertificateRequestConditionTypeIssued {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if _, ok := issuedAt[r.Name]; !ok {
			issuedAt[r.Name] = now
			if len(issuedAt) == n {
				close(done)
			}
		}
	}
	f := informers.NewSharedInformerFactoryWithOptions(apiserver.Client, 0, informers.WithNamespace(ns))
	inf := f.Certificates().V1().PodCertificateRequests().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: seen, UpdateFunc: func(_, o any) { seen(o) }}); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	f.Start(stop)
	f.WaitForCacheSync(stop)

	before := apiserverRequests(b)
	b.ResetTimer()
	start := time.Now()
	created := make([]time.Time, n)
	names := make([]string, n)
	sem = make(chan struct{}, 64)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			for {
				r, err := nodeCS.CertificatesV1().PodCertificateRequests(ns).Create(ctx, reqs[i], metav1.CreateOptions{})
				if err == nil {
					created[i], names[i] = time.Now(), r.Name
					return
				}
				if !strings.Contains(err.Error(), "while retrieving pod") { // NodeRestriction's cache
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	allCreated := time.Since(start)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		mu.Lock()
		b.Fatalf("%d of %d issued in 2 minutes\n%s", len(issuedAt), n, s.logs)
	}
	b.StopTimer()
	last := start
	lat := make([]time.Duration, 0, n)
	for i, name := range names {
		at := issuedAt[name]
		lat = append(lat, at.Sub(created[i]))
		if at.After(last) {
			last = at
		}
	}
	elapsed := last.Sub(start)
	after := apiserverRequests(b)
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100]
	issued, denied, retried := s.obs.counts()
	retries := 0
	for _, v := range retried {
		retries += v
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "issued/s")
	b.ReportMetric(float64(p99.Milliseconds()), "p99-ms")
	b.ReportMetric((after-before)/elapsed.Seconds(), "apiserver-req/s")
	b.ReportMetric(float64(retries), "retries")
	b.Logf("%d requests created in %s, all issued %s after the first: %.0f issued/s; creation to issue p50 %s, p99 %s; API server %.0f requests (%.0f/s); signer: %d issued, %d denied, retries %v; warden's client %d QPS burst %d",
		n, allCreated.Round(time.Millisecond), elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), p50.Round(time.Millisecond), p99.Round(time.Millisecond),
		after-before, (after-before)/elapsed.Seconds(), issued, len(denied), retried, kube.DefaultQPS, kube.DefaultBurst)
	if len(denied) > 0 || issued != n {
		b.Errorf("issued %d, denied %v", issued, denied)
	}
}
