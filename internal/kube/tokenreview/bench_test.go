package tokenreview_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/tokenreview"
)

// BenchmarkTokenReviewCreateCertificate measures CreateCertificate over
// gRPC+TLS authenticated by TokenReview against the real API server, with
// the token cache and without it (a review per request, at warden's
// client rate limit and without one). Each parallel
// caller has its own service account and token, as sidecars do.
func BenchmarkTokenReviewCreateCertificate(b *testing.B) {
	ns := apiserver.Namespace(b, "bench")
	const callers = 8
	tokens := make([]string, callers)
	for i := range tokens {
		name := fmt.Sprintf("w%d", i)
		apiserver.ServiceAccount(b, ns, name)
		tokens[i] = apiserver.Token(b, ns, name, "istio-ca")
	}
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i], _ = ca.NewCSR(catest.Key(b, ca.ECDSAP256), spiffeid.ID{})
	}
	unthrottled := rest.CopyConfig(apiserver.Config)
	unthrottled.QPS = -1 // no client-side rate limit: the API server's own pace
	csFree := kubernetes.NewForConfigOrDie(unthrottled)
	for _, bc := range []struct {
		name   string
		client kubernetes.Interface
		cache  time.Duration
	}{
		{"cached", apiserver.Client, 0},
		{"uncached-qps200", apiserver.Client, -1}, // a review per request, at warden's client QPS
		{"uncached-unthrottled", csFree, -1},      // a review per request, no client limit
	} {
		b.Run(bc.name, func(b *testing.B) {
			auth := &tokenreview.Authenticator{Client: bc.client, TrustDomain: catest.TrustDomain, MaxCacheTTL: bc.cache}
			c := caServer(b, auth)
			var next atomic.Int64
			b.SetParallelism(callers / 2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := int(next.Add(1)-1) % callers
				i := 0
				for pb.Next() {
					if _, err := c.CreateCertificate(context.Background(), csrs[i%len(csrs)], 0, tokens[w]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
		})
	}
}
