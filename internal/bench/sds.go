package bench

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/unixsock"
	"github.com/wardenmesh/warden/sds"
	sdsserver "github.com/wardenmesh/warden/sds/server"
)

// SDSResult is what an SDS fan-out run measured in the server process.
type SDSResult struct {
	Streams          int
	HeapPerStream    float64 // bytes of live heap per open stream
	StackPerStream   float64 // bytes of goroutine stack per open stream
	GoroutinesPerStr float64
	ConnectAll       time.Duration // until every stream had its first response
	RootPush         time.Duration // from the bundle change until every stream had the new ROOTCA
}

// Print writes the result for people.
func (r SDSResult) Print(w io.Writer) {
	fmt.Fprintf(w, "SDS streams: %d (one agent process; clients in a separate process)\n", r.Streams)
	fmt.Fprintf(w, "server heap per stream: %.1f KiB; goroutine stacks %.1f KiB more (%.1f goroutines per stream)\n", r.HeapPerStream/1024, r.StackPerStream/1024, r.GoroutinesPerStr)
	fmt.Fprintf(w, "all streams served: %s\n", r.ConnectAll.Round(time.Millisecond))
	fmt.Fprintf(w, "root change reached all streams: %s\n", r.RootPush.Round(time.Millisecond))
}

// liveMem is the live heap and the goroutine stacks, after a full GC.
func liveMem() (heap, stack uint64) {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// SDS serves SDS for one identity on a Unix socket in this process, opens
// streams from a child process (exe clientArgs...), and measures heap per
// stream and how long a root change takes to reach every stream.
func SDS(ctx context.Context, streams int, exe string, clientArgs []string) (SDSResult, error) {
	root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", MaxPathLen: -1})
	if err != nil {
		return SDSResult{}, err
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.New(ca.Config{TrustDomain: td}, root)
	if err != nil {
		return SDSResult{}, err
	}
	var srv *sdsserver.Server
	cache, err := sds.NewCache(ctx, sds.Config{Fetcher: &sds.LocalFetcher{Authority: authority}, OnUpdate: func(s *sds.SVID) {
		if srv != nil {
			srv.Updated(s)
		}
	}})
	if err != nil {
		return SDSResult{}, err
	}
	id := spiffeid.RequireFromSegments(td, "ns", "default", "sa", "sleep")
	srv, err = sdsserver.New(ctx, sdsserver.Config{Cache: cache, Identify: sdsserver.FixedIdentify(id),
		Roots: func() []*x509.Certificate { return authority.Bundle().X509Authorities() }})
	if err != nil {
		return SDSResult{}, err
	}
	dir, err := os.MkdirTemp("", "warden-bench-sds")
	if err != nil {
		return SDSResult{}, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "sds.sock")
	lis, err := unixsock.Listen(sock, 0o600)
	if err != nil {
		return SDSResult{}, err
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	if _, err := cache.Get(ctx, id); err != nil {
		return SDSResult{}, err
	}

	base, baseStack := liveMem()
	baseG := runtime.NumGoroutine()
	cmd := exec.CommandContext(ctx, exe, append(clientArgs, "--socket", sock, "--streams", fmt.Sprint(streams))...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return SDSResult{}, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return SDSResult{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return SDSResult{}, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(out)
	expect := func(word string) error {
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), word) {
				return nil
			}
		}
		return fmt.Errorf("bench: client process ended before %s: %v", word, lines.Err())
	}
	if err := expect("READY"); err != nil {
		return SDSResult{}, err
	}
	res := SDSResult{Streams: streams, ConnectAll: time.Since(start)}
	heap, stack := liveMem()
	res.HeapPerStream = (float64(heap) - float64(base)) / float64(streams)
	res.StackPerStream = (float64(stack) - float64(baseStack)) / float64(streams)
	res.GoroutinesPerStr = float64(runtime.NumGoroutine()-baseG) / float64(streams)

	next, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: "next root", MaxPathLen: -1})
	if err != nil {
		return SDSResult{}, err
	}
	m := authority.Material()
	if err := authority.Activate(&ca.Material{Cert: m.Cert, Key: m.Key, Chain: m.Chain, Roots: append(append([]*x509.Certificate{}, m.Roots...), next.Cert)}); err != nil {
		return SDSResult{}, err
	}
	pushed := time.Now()
	srv.RootsChanged()
	if err := expect("PUSHED"); err != nil {
		return SDSResult{}, err
	}
	res.RootPush = time.Since(pushed)
	_, _ = io.WriteString(stdin, "done\n")
	return res, nil
}

// SDSClients is the client side of SDS: it opens streams on socket (Envoy
// style: request default and ROOTCA, ACK every response), prints READY once
// all have their first response, and PUSHED once all have seen a ROOTCA
// with two roots.
func SDSClients(ctx context.Context, socket string, streams, conns int, w io.Writer) error {
	if conns <= 0 {
		conns = max(1, streams/500)
	}
	clients := make([]secretsvc.SecretDiscoveryServiceClient, conns)
	for i := range clients {
		c, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer c.Close()
		clients[i] = secretsvc.NewSecretDiscoveryServiceClient(c)
	}
	var ready, pushed, failed atomic.Int64
	errs := make(chan error, 1)
	names := []string{sds.DefaultName, sds.RootName}
	for i := range streams {
		go func() {
			s, err := clients[i%conns].StreamSecrets(ctx)
			if err == nil {
				err = s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("sidecar~10.0.%d.%d~p%d.default~default.svc.cluster.local", i/250, i%250, i)},
					ResourceNames: names, TypeUrl: resource.SecretType})
			}
			first := true
			for err == nil {
				var resp *discovery.DiscoveryResponse
				if resp, err = s.Recv(); err != nil {
					break
				}
				roots := 0
				for _, r := range resp.Resources {
					var sec tlsv3.Secret
					if r.UnmarshalTo(&sec) == nil && sec.Name == sds.RootName {
						roots = strings.Count(string(sec.GetValidationContext().GetTrustedCa().GetInlineBytes()), "BEGIN CERTIFICATE")
					}
				}
				err = s.Send(&discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names, TypeUrl: resource.SecretType})
				if first {
					first = false
					if ready.Add(1) == int64(streams) {
						fmt.Fprintln(w, "READY")
					}
				}
				if roots == 2 {
					if pushed.Add(1) == int64(streams) {
						fmt.Fprintln(w, "PUSHED")
					}
					<-ctx.Done()
					return
				}
			}
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
