package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bench"
	"github.com/wardenmesh/warden/token"
)

func runBenchCA(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bench ca")
	addr := fs.String("ca", e.caAddr(), "warden's CA port, host:port (env WARDEN_ADDR)")
	fs.StringVar(addr, "addr", e.caAddr(), "the same as --ca")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "standalone data directory (token key, root certificate)")
	rootFile := fs.String("root-cert", "", rootCertUsage)
	conc := fs.Int("concurrency", 4*runtime.GOMAXPROCS(0), "parallel callers")
	conns := fs.Int("conns", 0, "gRPC connections (default one per 8 callers)")
	dur := fs.Duration("duration", 10*time.Second, "measured duration")
	warm := fs.Duration("warmup", time.Second, "unmeasured warm-up")
	kt := fs.String("key-type", string(ca.ECDSAP256), "workload key type: "+ca.KeyTypeNames())
	iss := fs.String("token-issuer", defaultTokenIssuer, "iss of the minted tokens")
	fleet := fs.Int("fleet", 0, "fleet mode: prepare this many distinct tokens, one per request, so the server verifies every token (a scale-up); 0: each caller reuses one token (renewals, answered from the token cache)")
	runs := fs.Int("runs", 1, "measured runs; with more than one, the median throughput is reported too")
	metrics := fs.String("server-metrics", "http://"+defaultHTTPListen+"/metrics", "the server's /metrics, for its CPU time and memory (empty: not reported)")
	hostile := fs.Bool("hostile", false, "measure honest callers before, beside and after hostile clients (oversized headers, stalled streams, idle, half-open and garbage connections)")
	var hc bench.HostileConfig
	fs.IntVar(&hc.Oversized, "hostile-oversized", 200, "--hostile: callers sending never-ending oversized authorization headers")
	fs.IntVar(&hc.HeaderBytes, "hostile-header-bytes", 8<<20, "--hostile: size of each oversized header")
	fs.IntVar(&hc.Stalled, "hostile-stalled", 1000, "--hostile: streams whose body never comes")
	fs.IntVar(&hc.Idle, "hostile-idle", 1000, "--hostile: TLS connections that open no stream")
	fs.IntVar(&hc.HalfOpen, "hostile-half-open", 200, "--hostile: TCP connections that never start TLS")
	fs.IntVar(&hc.Garbage, "hostile-garbage", 20, "--hostile: callers sending random bytes after TLS")
	sources := fs.Int("hostile-sources", 8, "--hostile: source addresses the hostile clients dial from (127.0.0.2 and up) when the CA is on loopback")
	settle := fs.Duration("settle", 3*time.Second, "--hostile: pause after the hostile clients start and after they leave")
	if err := parse(fs, args); err != nil {
		return err
	}
	metricsSet := false
	fs.Visit(func(f *flag.Flag) { metricsSet = metricsSet || f.Name == "server-metrics" })
	if *runs < 1 {
		return fmt.Errorf("%w: --runs %d: want at least 1", errUsage, *runs)
	}
	keyType, err := ca.ParseKeyType(*kt)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	anchors, err := e.trustAnchors(*rootFile, *dataDir)
	if err != nil {
		return err
	}
	roots := certPool(anchors)
	issuer, err := tokenIssuer(*dataDir, *iss, false, false)
	if err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(*addr)
	cfg := bench.CAConfig{
		Addr: *addr, Roots: roots, ServerName: host,
		Concurrency: *conc, Conns: *conns, Duration: *dur, Warmup: *warm, KeyType: keyType, Fleet: *fleet,
		Token: func(w int) (string, error) {
			return issuer.Mint(token.ServiceAccount{Namespace: "bench", Name: fmt.Sprintf("worker-%d", w)}, nil, time.Hour)
		},
	}
	if *metrics != "" {
		if _, err := bench.Scrape(ctx, *metrics); err != nil {
			if metricsSet || *hostile {
				return fmt.Errorf("--server-metrics: %w", err)
			}
			fmt.Fprintf(e.stderr, "no server figures (%v); point --server-metrics at the server's /metrics for them\n", err)
			*metrics = ""
		}
	}
	cfg.Metrics = *metrics
	if *hostile {
		hc.Addr, hc.Roots, hc.ServerName = *addr, roots, host
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() && ip.To4() != nil {
			for i := range *sources {
				hc.Sources = append(hc.Sources, net.IPv4(127, 0, 0, byte(2+i)))
			}
		}
		fmt.Fprintf(e.stderr, "preparing %s keys and CSRs...\n", keyType)
		res, err := bench.CAUnderAttack(ctx, cfg, hc, *settle, e.stderr)
		if err != nil {
			return err
		}
		res.Print(e.stdout)
		if n := res.Before.Errors + res.During.Errors + res.After.Errors; n > 0 {
			return fmt.Errorf("%d honest requests failed", n)
		}
		return nil
	}
	var rates []float64
	for i := range *runs {
		fmt.Fprintf(e.stderr, "run %d/%d: preparing %s keys and CSRs...\n", i+1, *runs, keyType)
		res, err := bench.CA(ctx, cfg)
		if err != nil {
			return err
		}
		res.Print(e.stdout)
		if res.Errors > 0 {
			return fmt.Errorf("%d requests failed", res.Errors)
		}
		rates = append(rates, res.PerSecond())
	}
	if *runs > 1 {
		fmt.Fprintf(e.stdout, "median of %d runs: %.0f certs/s (runs: %s)\n", *runs, bench.Median(rates), bench.FormatRates(rates))
	}
	return nil
}

func runBenchSDS(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bench sds")
	streams := fs.Int("streams", 10000, "concurrent SDS streams")
	if err := parse(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "opening %d SDS streams...\n", *streams)
	res, err := bench.SDS(ctx, *streams, exe, []string{"bench", "sds-clients"})
	if err != nil {
		return err
	}
	res.Print(e.stdout)
	return nil
}

// runBenchSDSClients is the client half of 'bench sds', run as a child
// process so that its memory does not count against the server's. It
// stops when its standard input closes.
func runBenchSDSClients(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bench sds-clients")
	socket := fs.String("socket", "", "SDS socket")
	streams := fs.Int("streams", 1000, "streams")
	conns := fs.Int("conns", 0, "connections (default one per 500 streams)")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	return bench.SDSClients(ctx, *socket, *streams, *conns, e.stdout)
}

func runBenchXDS(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bench xds")
	proxies := fs.Int("proxies", 1000, "simulated proxies (ADS streams)")
	services := fs.Int("services", 100, "services in the mesh")
	debounce := fs.Duration("debounce", 100*time.Millisecond, "push debounce window")
	sidecar := fs.Bool("sidecar", false, "scope the proxies with a Sidecar to their namespace (one service in ten)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the server from the edit until every proxy ACKed it")
	if err := parse(fs, args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := bench.XDSConfig{Proxies: *proxies, Services: *services, Debounce: *debounce, Sidecar: *sidecar,
		Exe: exe, ClientArgs: []string{"bench", "xds-clients"}}
	var (
		pf      *os.File
		profile *outWriter // pprof drops its write errors: kept here
	)
	if *cpuProfile != "" {
		var err error
		if pf, err = os.Create(*cpuProfile); err != nil {
			return err
		}
		defer pf.Close()
		profile = &outWriter{w: pf}
		cfg.CPUProfile = profile
	}
	fmt.Fprintf(e.stderr, "connecting %d proxies to a %d-service mesh...\n", *proxies, *services)
	res, err := bench.XDS(ctx, cfg)
	if err != nil {
		return err
	}
	if profile != nil {
		if err := errors.Join(profile.err, pf.Close()); err != nil {
			return fmt.Errorf("--cpuprofile %s: %w", *cpuProfile, err)
		}
	}
	res.Print(e.stdout)
	return nil
}

// runBenchXDSClients is the client half of 'bench xds', a child process.
func runBenchXDSClients(ctx context.Context, e *env, args []string) error {
	fs := e.flags("bench xds-clients")
	addr := fs.String("addr", "", "ADS address")
	proxies := fs.Int("proxies", 1000, "proxies")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	return bench.XDSClients(ctx, *addr, *proxies, e.stdout)
}
