package server_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/token"
)

// BenchmarkCreateCertificate is the whole path in one process: gRPC over
// TLS on loopback, JWT authentication (cached after the first call per
// token, as agents reuse their token), CSR checks and signing. Client and
// server share the machine's cores.
func BenchmarkCreateCertificate(b *testing.B) {
	f := newBenchFixture(b)
	c, err := client.New(client.Config{Addr: f.addr, Roots: f.roots})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	csrs := make([][]byte, 64)
	for i := range csrs {
		csrs[i], _ = ca.NewCSR(catest.Key(b, ca.ECDSAP256), spiffeid.ID{})
	}
	var worker atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := worker.Add(1)
		tok, err := f.issuer.Mint(token.ServiceAccount{Namespace: "bench", Name: fmt.Sprintf("w%d", w)}, nil, 3600e9)
		if err != nil {
			b.Error(err)
			return
		}
		i := 0
		for pb.Next() {
			if _, err := c.CreateCertificate(b.Context(), csrs[i%len(csrs)], 0, tok); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
