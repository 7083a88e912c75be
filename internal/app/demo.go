package app

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/wardenmesh/warden/sds"
)

// The demo workloads: proxyless gRPC server and client on grpc-go's xDS
// support, configured by warden over ADS, with certificates that
// 'warden agent --output-dir' keeps fresh.

type demoFlags struct {
	xdsAddr, node, certs string
}

func (d *demoFlags) register(fs interface {
	StringVar(*string, string, string, string)
}, e *env) {
	fs.StringVar(&d.xdsAddr, "ca", e.caAddr(), "warden's CA port, where it serves xDS too, host:port (env WARDEN_ADDR)")
	fs.StringVar(&d.xdsAddr, "xds", e.caAddr(), "the same as --ca")
	fs.StringVar(&d.node, "node", "", "node ID, sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local (required)")
	fs.StringVar(&d.certs, "certs", "", "directory with cert-chain.pem, key.pem and root-cert.pem, as written by 'warden agent --output-dir' (required)")
}

// bootstrap is grpc-go's xDS bootstrap: warden over mTLS with the
// workload's own certificate, the GENERATOR=grpc node, and a file_watcher
// certificate provider named "default" for data-plane mTLS.
func (d *demoFlags) bootstrap() ([]byte, error) {
	if d.node == "" || d.certs == "" {
		return nil, fmt.Errorf("%w: --node and --certs are required", errUsage)
	}
	files := map[string]string{
		"certificate_file":    filepath.Join(d.certs, sds.FileCertChain),
		"private_key_file":    filepath.Join(d.certs, sds.FileKey),
		"ca_certificate_file": filepath.Join(d.certs, sds.FileRootCert),
	}
	// Both the data plane's certificates and the xDS channel's are
	// re-read every 5 s: the agent rewrites them at every renewal.
	provider := map[string]any{"refresh_interval": "5s"}
	for k, v := range files {
		provider[k] = v
	}
	// Data-plane peers: with the agent's SPIFFE bundle map (written when
	// the workload federates, or always with --output-dir), each peer is
	// validated with its own trust domain's bundle. grpc-go reads it only
	// with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true (1.85; gRFC A87) and
	// otherwise falls back to ca_certificate_file, the local bundle.
	dataPlane := maps.Clone(provider)
	if bm := filepath.Join(d.certs, sds.FileBundleMap); fileExists(bm) {
		dataPlane["spiffe_trust_bundle_map_file"] = bm
	}
	return json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      d.xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "tls", "config": provider}},
			"server_features": []string{"xds_v3"},
		}},
		"node":                                   map[string]any{"id": d.node, "metadata": map[string]string{"GENERATOR": "grpc"}},
		"certificate_providers":                  map[string]any{"default": map[string]any{"plugin_name": "file_watcher", "config": dataPlane}},
		"server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
	})
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func runDemoServer(ctx context.Context, e *env, args []string) error {
	var d demoFlags
	var listen, version string
	fs := e.flags("demo server")
	d.register(fs, e)
	fs.StringVar(&listen, "listen", "", "address to serve on, e.g. 127.0.0.3:8080 (required)")
	fs.StringVar(&version, "version", "v1", "the version this server answers with")
	if err := parse(fs, args); err != nil {
		return err
	}
	boot, err := d.bootstrap()
	if err != nil {
		return err
	}
	if listen == "" {
		return fmt.Errorf("%w: --listen is required", errUsage)
	}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(boot),
		xds.ServingModeCallback(func(addr net.Addr, a xds.ServingModeChangeArgs) {
			fmt.Fprintf(e.stderr, "demo server %s: %s serving mode %s (%v)\n", version, addr, a.Mode, a.Err)
		}))
	if err != nil {
		return err
	}
	testgrpc.RegisterTestServiceServer(srv, &demoService{version: version})
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	fmt.Fprintf(e.stdout, "demo server %s listening on %s\n", version, lis.Addr())
	if err := srv.Serve(lis); !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

type demoService struct {
	testgrpc.UnimplementedTestServiceServer
	version string
}

// UnaryCall answers with the server's version and the caller's identity
// as the server saw it.
func (s *demoService) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	caller := "plaintext"
	if p, ok := peer.FromContext(ctx); ok {
		if id := peerID(p.AuthInfo); id != "" {
			caller = id
		}
	}
	return &testgrpc.SimpleResponse{ServerId: s.version, Hostname: caller}, nil
}

// EmptyCall answers nothing: a second method (path) for RBAC to tell
// apart.
func (s *demoService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func peerID(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return ""
	}
	return firstURI(info.State.PeerCertificates[0])
}

func firstURI(c *x509.Certificate) string {
	if len(c.URIs) == 0 {
		return c.Subject.String()
	}
	return c.URIs[0].String()
}

func runDemoClient(ctx context.Context, e *env, args []string) error {
	var d demoFlags
	var target string
	var n int
	var every time.Duration
	var headers multiFlag
	var rpc string
	fs := e.flags("demo client")
	d.register(fs, e)
	fs.Var(&headers, "header", "request metadata k=v sent with every call (repeatable)")
	fs.StringVar(&rpc, "rpc", "unary", "the method to call: unary (UnaryCall) or empty (EmptyCall)")
	fs.StringVar(&target, "target", "xds:///flaskapp.default.svc.cluster.local:8080", "xds:/// target to call")
	fs.IntVar(&n, "n", 10, "number of calls")
	fs.DurationVar(&every, "every", 0, "pause between calls")
	newConn := fs.Bool("new-conn", false, "a new connection (and TLS handshake, with the certificates on disk now) for every call, which fails at once instead of waiting for a ready connection")
	if err := parse(fs, args); err != nil {
		return err
	}
	if rpc != "unary" && rpc != "empty" {
		return fmt.Errorf("%w: --rpc %q: want unary or empty", errUsage, rpc)
	}
	var md []string
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			return fmt.Errorf("%w: --header %q is not k=v", errUsage, h)
		}
		md = append(md, strings.ToLower(k), v)
	}
	boot, err := d.bootstrap()
	if err != nil {
		return err
	}
	resolver, err := xds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		return err
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	dial := func() (*grpc.ClientConn, error) {
		return grpc.NewClient(target, grpc.WithTransportCredentials(creds), grpc.WithResolvers(resolver))
	}
	cc, err := dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	counts := map[string]int{}
	failed := 0
	for i := 1; i <= n; i++ {
		cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, md...), 10*time.Second)
		var p peer.Peer
		resp := &testgrpc.SimpleResponse{ServerId: "EmptyCall", Hostname: "-"}
		conn, ready := cc, grpc.WaitForReady(true)
		if *newConn {
			if conn, err = dial(); err != nil {
				cancel()
				return err
			}
			ready = grpc.WaitForReady(false)
		}
		client := testgrpc.NewTestServiceClient(conn)
		var err error
		if rpc == "unary" {
			resp, err = client.UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.Peer(&p), ready)
		} else {
			_, err = client.EmptyCall(cctx, &testgrpc.Empty{}, grpc.Peer(&p), ready)
		}
		if *newConn {
			conn.Close()
		}
		cancel()
		if err != nil {
			st := status.Convert(err)
			fmt.Fprintf(e.stdout, "call %d: %s: %s\n", i, st.Code(), st.Message())
			counts["error "+st.Code().String()]++
			failed++
		} else {
			transport := "plaintext"
			if id := peerID(p.AuthInfo); id != "" {
				transport = "mTLS to " + id
			}
			fmt.Fprintf(e.stdout, "call %d: flaskapp %s (%s; server saw %s)\n", i, resp.GetServerId(), transport, resp.GetHostname())
			counts[resp.GetServerId()]++
		}
		if every > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(every):
			}
		}
	}
	out, _ := json.Marshal(counts)
	fmt.Fprintf(e.stdout, "summary: %s\n", out)
	if failed == n {
		return fmt.Errorf("all %d calls failed", n)
	}
	return nil
}
