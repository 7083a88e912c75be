// Package bench drives load against warden's servers and reports
// throughput and latency percentiles. It prepares every key, CSR and token
// before the clock starts, so on a small machine the client's own crypto
// does not compete with the server being measured.
package bench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
)

// CAConfig describes a CreateCertificate load run.
type CAConfig struct {
	Addr        string
	Roots       *x509.CertPool
	ServerName  string
	Concurrency int           // parallel callers
	Conns       int           // gRPC connections, shared round-robin (default 1 per 8 callers)
	Duration    time.Duration // measured period
	Warmup      time.Duration // unmeasured period first
	KeyType     ca.KeyType
	CSRs        int                              // distinct CSRs prepared and cycled (default 256)
	Token       func(worker int) (string, error) // bearer token for a caller (each call a new one)
	// Fleet, when positive, prepares that many distinct tokens and uses
	// each for one request, as a scale-up's pods would: the server checks
	// every token's signature (no cache hit). Without it each caller
	// reuses one token, as renewals do, and the server's token cache
	// answers.
	Fleet int
	// Metrics is the server's /metrics URL; when set, the server's own
	// CPU time and memory during the measured period are reported.
	Metrics string
}

// CAResult is what a run measured.
type CAResult struct {
	Config CAConfig // with defaults filled in
	Certs  int
	Errors int
	// Issued counts every certificate the run got, warm-up and each
	// connection's first request included (to compare with the server's
	// citadel_server_success_cert_issuance_count).
	Issued int
	// FleetReused counts the requests of a fleet run made after its
	// tokens ran out (each reusing one, so answered from the cache).
	FleetReused int
	FirstErr    error
	Elapsed     time.Duration
	P50, P90    time.Duration
	P99, Max    time.Duration
	// ClientCPU is this process's CPU time (user+system) during the
	// measured period: what the load generator took from the machine.
	ClientCPU time.Duration
	// With Config.Metrics: the server process's CPU time during the
	// measured period, its peak heap and RSS, and both at the end.
	ServerCPU  time.Duration
	ServerPeak ServerSample
	ServerEnd  ServerSample
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// PerSecond is the certificate throughput.
func (r CAResult) PerSecond() float64 { return float64(r.Certs) / r.Elapsed.Seconds() }

// Print writes the result for people.
func (r CAResult) Print(w io.Writer) {
	cfg := r.Config
	fmt.Fprintf(w, "CreateCertificate over TLS to %s: %d callers on %d connections, %s workload keys, %s\n",
		cfg.Addr, cfg.Concurrency, cfg.Conns, cfg.KeyType, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "certs: %d  errors: %d  (issued in all, warm-up included: %d)\n", r.Certs, r.Errors, r.Issued)
	if cfg.Fleet > 0 {
		fmt.Fprintf(w, "fleet: every request with a token the server has not seen (%d prepared", cfg.Fleet)
		if r.FleetReused > 0 {
			fmt.Fprintf(w, "; %d requests after they ran out reused one: prepare more with --fleet", r.FleetReused)
		}
		fmt.Fprintln(w, ")")
	}
	fmt.Fprintf(w, "throughput: %.0f certs/s\n", r.PerSecond())
	fmt.Fprintf(w, "latency: p50 %s  p90 %s  p99 %s  max %s\n", r.P50.Round(time.Microsecond), r.P90.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond))
	fmt.Fprintf(w, "load generator CPU: %.2f cores (%.0f µs per cert)\n", r.ClientCPU.Seconds()/r.Elapsed.Seconds(), float64(r.ClientCPU.Microseconds())/float64(max(r.Certs, 1)))
	if r.Config.Metrics != "" {
		fmt.Fprintf(w, "server CPU: %.2f cores (%.0f µs per cert); heap in use %s peak, %s at the end; RSS %s peak\n",
			r.ServerCPU.Seconds()/r.Elapsed.Seconds(), float64(r.ServerCPU.Microseconds())/float64(max(r.Certs, 1)),
			MiB(r.ServerPeak.HeapInuse), MiB(r.ServerEnd.HeapInuse), MiB(r.ServerPeak.RSS))
	}
	if r.FirstErr != nil {
		fmt.Fprintf(w, "first error: %v\n", r.FirstErr)
	}
}

func (c *CAConfig) fill() error {
	if c.Concurrency <= 0 {
		return errors.New("bench: concurrency must be positive")
	}
	if c.Duration <= 0 {
		return errors.New("bench: duration must be positive")
	}
	if c.Conns <= 0 {
		c.Conns = (c.Concurrency + 7) / 8
	}
	if c.CSRs <= 0 {
		c.CSRs = 256
	}
	if c.Token == nil {
		return errors.New("bench: a token source is required")
	}
	return nil
}

// CA runs the load and returns what it measured.
func CA(ctx context.Context, cfg CAConfig) (CAResult, error) {
	if err := cfg.fill(); err != nil {
		return CAResult{}, err
	}
	csrs := make([][]byte, cfg.CSRs)
	for i := range csrs {
		key, err := ca.GenerateKey(cfg.KeyType)
		if err != nil {
			return CAResult{}, err
		}
		if csrs[i], err = ca.NewCSR(key, spiffeid.ID{}); err != nil {
			return CAResult{}, err
		}
	}
	tokens := make([]string, cfg.Concurrency)
	for i := range tokens {
		var err error
		if tokens[i], err = cfg.Token(i); err != nil {
			return CAResult{}, err
		}
	}
	// Fleet mode: each worker's own run of distinct tokens.
	fleet := make([][]string, cfg.Concurrency)
	if cfg.Fleet > 0 {
		per := max(1, cfg.Fleet/cfg.Concurrency)
		for w := range fleet {
			for range per {
				t, err := cfg.Token(w)
				if err != nil {
					return CAResult{}, err
				}
				fleet[w] = append(fleet[w], t)
			}
		}
	}
	clients := make([]*client.Client, cfg.Conns)
	for i := range clients {
		c, err := client.New(client.Config{Addr: cfg.Addr, Roots: cfg.Roots, ServerName: cfg.ServerName})
		if err != nil {
			return CAResult{}, err
		}
		defer c.Close()
		// Connect and warm the token cache before measuring.
		if _, err := c.CreateCertificate(ctx, csrs[0], 0, tokens[i%len(tokens)]); err != nil {
			return CAResult{}, fmt.Errorf("bench: first request: %w", err)
		}
		clients[i] = c
	}

	var (
		mu       sync.Mutex
		lats     []time.Duration
		res      = CAResult{Config: cfg, Issued: len(clients)}
		wg       sync.WaitGroup
		measure  = make(chan struct{})
		stopping = make(chan struct{})
	)
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%len(clients)]
			var local []time.Duration
			n, errs, issued, next, reused := 0, 0, 0, 0, 0
			var firstErr error
			measuring := false
			for i := w; ; i++ {
				select {
				case <-stopping:
					mu.Lock()
					lats = append(lats, local...)
					res.Certs += n
					res.Errors += errs
					res.Issued += issued
					res.FleetReused += reused
					if res.FirstErr == nil {
						res.FirstErr = firstErr
					}
					mu.Unlock()
					return
				case <-measure:
					measuring = true
				default:
				}
				t := time.Now()
				tok := tokens[w]
				if cfg.Fleet > 0 {
					if next < len(fleet[w]) {
						tok = fleet[w][next]
						next++
					} else if measuring {
						reused++
					}
				}
				_, err := c.CreateCertificate(ctx, csrs[i%len(csrs)], 0, tok)
				d := time.Since(t)
				if err == nil {
					issued++
				}
				if !measuring {
					continue
				}
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				n++
				local = append(local, d)
			}
		}()
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
	}
	var (
		server0 ServerSample
		peaks   *peakSampler
	)
	if cfg.Metrics != "" {
		var err error
		if server0, err = Scrape(ctx, cfg.Metrics); err != nil {
			close(stopping)
			wg.Wait()
			return res, fmt.Errorf("bench: server metrics: %w", err)
		}
		peaks = samplePeaks(ctx, cfg.Metrics, 250*time.Millisecond)
	}
	close(measure)
	begin, cpu0 := time.Now(), cpuTime()
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	close(stopping)
	wg.Wait() // requests in flight at the stop are counted, so is their time
	res.Elapsed, res.ClientCPU = time.Since(begin), cpuTime()-cpu0
	if peaks != nil {
		res.ServerPeak = peaks.Stop()
		end, err := Scrape(ctx, cfg.Metrics)
		if err != nil {
			return res, fmt.Errorf("bench: server metrics: %w", err)
		}
		res.ServerEnd = end
		res.ServerCPU = time.Duration((end.CPUSeconds - server0.CPUSeconds) * float64(time.Second))
		res.ServerPeak.HeapInuse = max(res.ServerPeak.HeapInuse, end.HeapInuse)
		res.ServerPeak.RSS = max(res.ServerPeak.RSS, end.RSS)
	}
	slices.Sort(lats)
	if len(lats) > 0 {
		pct := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
		res.P50, res.P90, res.P99, res.Max = pct(0.50), pct(0.90), pct(0.99), lats[len(lats)-1]
	}
	return res, ctx.Err()
}

// MiB renders a byte count as "12.3 MiB".
func MiB(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// Median is the median of xs (the mean of the middle two for an even
// count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// FormatRates renders throughputs as "812 790 804".
func FormatRates(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, " ")
}
