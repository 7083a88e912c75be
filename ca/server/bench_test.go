package server_test

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/token"
)

// cannedSigner answers every request with one certificate issued at the
// start: what remains is the transport (TLS, HTTP/2, gRPC, protobuf) and
// authentication.
type cannedSigner struct {
	*ca.Authority
	iss *ca.Issued
}

func (c cannedSigner) Sign(ca.SignRequest) (*ca.Issued, error) { return c.iss, nil }

// BenchmarkCreateCertificate is the whole path in one process: gRPC over
// TLS on loopback, JWT authentication (cached after the first call per
// token, as agents reuse their token), CSR checks and signing. Client and
// server share the machine's cores, and cpu-µs/op is the process's CPU
// (both ends) per certificate. "canned" answers with a certificate made
// once: its figure is the transport's and authentication's share, both
// ends, the floor under "signed" that no CA work can remove.
func BenchmarkCreateCertificate(b *testing.B) {
	for _, mode := range []string{"signed", "canned"} {
		b.Run(mode, func(b *testing.B) {
			var opts []fixtureOpt
			if mode == "canned" {
				m := catest.Root(b, ca.CAOptions{})
				a := catest.Authority(b, m)
				iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(b, catest.Key(b, ca.ECDSAP256), nil), ID: idX})
				if err != nil {
					b.Fatal(err)
				}
				opts = append(opts, func(c *fixtureCfg) { c.material, c.signer = m, cannedSigner{a, iss} })
			}
			f := newBenchFixture(b, opts...)
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
			cpu0 := processCPU()
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
