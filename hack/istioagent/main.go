// Command istio-probe drives Istio's own client code (istio.io/istio, at
// the version go.mod names) against a CA and xDS server, for warden's
// end-to-end tests: Istio's citadel CA client, its agent's secret cache,
// and gRPC applications configured by the bootstrap Istio's agent
// (pilot-agent, built beside this program) writes. It prints one JSON
// object per result on stdout; failures exit 1 with the error on stderr.
//
//	istio-probe csr --ca ADDR --root FILE (--token FILE | --cert FILE --key FILE) --id SPIFFE-ID [--out DIR]
//	istio-probe cache --ca ADDR --root FILE --token FILE --ns NAMESPACE --sa SERVICE-ACCOUNT
//	GRPC_XDS_BOOTSTRAP=FILE istio-probe grpc-server --listen HOST:PORT --version NAME
//	GRPC_XDS_BOOTSTRAP=FILE istio-probe grpc-client --target xds:///HOST:PORT [-n N] [--every D]
package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher"
	"istio.io/istio/security/pkg/nodeagent/cache"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: istio-probe csr|cache|grpc-server|grpc-client [flags]"))
	}
	var err error
	switch os.Args[1] {
	case "csr":
		err = csr(os.Args[2:])
	case "cache":
		err = secretCache(os.Args[2:])
	case "grpc-server":
		err = grpcServer(os.Args[2:])
	case "grpc-client":
		err = grpcClient(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "istio-probe:", err)
	os.Exit(1)
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// caOptions are the security options Istio's agent passes its CA client.
func caOptions(caAddr, td, token string) (*security.Options, error) {
	opts := &security.Options{CAEndpoint: caAddr, ClusterID: "Kubernetes", TrustDomain: td, ECCSigAlg: "ECDSA", ECCCurve: "P256",
		SecretTTL: 24 * time.Hour, SecretRotationGracePeriodRatio: 0.5, WorkloadRSAKeySize: 2048}
	if token != "" {
		f, err := credentialfetcher.NewCredFetcher(security.JWT, td, token, "")
		if err != nil {
			return nil, err
		}
		opts.CredFetcher = f
	}
	return opts, nil
}

// csr has Istio's citadel client sign a CSR for id, authenticated with a
// token (first certificate) or a certificate and key (renewal).
func csr(args []string) error {
	fs := flag.NewFlagSet("csr", flag.ExitOnError)
	caAddr := fs.String("ca", "", "CA address")
	root := fs.String("root", "", "root certificate of the CA's serving certificate")
	token := fs.String("token", "", "JWT file")
	cert := fs.String("cert", "", "client certificate chain (mTLS renewal)")
	key := fs.String("key", "", "client key (mTLS renewal)")
	id := fs.String("id", "", "SPIFFE ID to ask for")
	out := fs.String("out", "", "write cert-chain.pem, key.pem and root-cert.pem here")
	ttl := fs.Duration("ttl", 24*time.Hour, "certificate lifetime to ask for")
	fs.Parse(args)
	opts, err := caOptions(*caAddr, "cluster.local", *token)
	if err != nil {
		return err
	}
	client, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: *root, Cert: *cert, Key: *key})
	if err != nil {
		return err
	}
	defer client.Close()
	csrPEM, keyPEM, err := pkiutil.GenCSR(pkiutil.CertOptions{Host: *id, ECSigAlg: pkiutil.EcdsaSigAlg})
	if err != nil {
		return err
	}
	chain, err := client.CSRSign(csrPEM, int64(ttl.Seconds()))
	if err != nil {
		return err
	}
	leaf, err := parse(chain[0])
	if err != nil {
		return err
	}
	if *out != "" {
		if err := os.MkdirAll(*out, 0o700); err != nil {
			return err
		}
		files := map[string]string{"cert-chain.pem": strings.Join(chain[:len(chain)-1], ""), "key.pem": string(keyPEM), "root-cert.pem": chain[len(chain)-1]}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(*out, name), []byte(content), 0o600); err != nil {
				return err
			}
		}
	}
	emit(map[string]any{"id": uris(leaf), "chain": len(chain), "roots": subjects(chain[len(chain)-1])})
	return nil
}

// secretCache runs the secret cache of Istio's agent on Istio's citadel
// client and reads the two resources it serves Envoy: default and ROOTCA.
func secretCache(args []string) error {
	fs := flag.NewFlagSet("cache", flag.ExitOnError)
	caAddr := fs.String("ca", "", "CA address")
	root := fs.String("root", "", "root certificate of the CA's serving certificate")
	token := fs.String("token", "", "JWT file")
	td := fs.String("td", "cluster.local", "trust domain")
	ns := fs.String("ns", "", "the workload's namespace (POD_NAMESPACE)")
	sa := fs.String("sa", "", "the workload's service account (SERVICE_ACCOUNT)")
	fs.Parse(args)
	opts, err := caOptions(*caAddr, *td, *token)
	if err != nil {
		return err
	}
	opts.WorkloadNamespace, opts.ServiceAccount = *ns, *sa
	client, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: *root})
	if err != nil {
		return err
	}
	sc, err := cache.NewSecretManagerClient(client, opts)
	if err != nil {
		return err
	}
	defer sc.Close()
	def, err := sc.GenerateSecret(security.WorkloadKeyCertResourceName)
	if err != nil {
		return fmt.Errorf("default: %w", err)
	}
	rootItem, err := sc.GenerateSecret(security.RootCertReqResourceName)
	if err != nil {
		return fmt.Errorf("ROOTCA: %w", err)
	}
	leaf, err := parse(string(def.CertificateChain))
	if err != nil {
		return err
	}
	roots := certs(string(rootItem.RootCert))
	var fps []string
	signer := -1
	for i, r := range roots {
		fps = append(fps, fingerprint(r))
		pool := x509.NewCertPool()
		pool.AddCert(r)
		inter := x509.NewCertPool()
		for _, c := range certs(string(def.CertificateChain))[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil && signer < 0 {
			signer = i
		}
	}
	// roots: ROOTCA's roots (SHA-256, in order); leaf_root: the index of
	// the one the default certificate chains to (-1: none).
	emit(map[string]any{"id": uris(leaf), "roots": fps, "leaf_root": signer})
	return nil
}

func certs(bundle string) []*x509.Certificate {
	var out []*x509.Certificate
	rest := []byte(bundle)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func parse(p string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func uris(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

// subjects are the common names (or serial numbers) of the certificates
// in a PEM bundle, in order.
func subjects(bundle string) []string {
	var out []string
	rest := []byte(bundle)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			out = append(out, "unparsable")
			continue
		}
		name := c.Subject.CommonName
		if name == "" {
			name = c.Subject.String()
		}
		if name == "" {
			name = c.SerialNumber.String()
		}
		out = append(out, name)
	}
}

type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	version string
}

func (s *testServer) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	caller := "plaintext"
	if p, ok := peer.FromContext(ctx); ok {
		caller = peerID(p)
	}
	return &testgrpc.SimpleResponse{Hostname: s.version, ServerId: caller}, nil
}

// peerID is the SPIFFE ID of the other side's certificate, or
// "plaintext".
func peerID(p *peer.Peer) string {
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		return strings.Join(uris(ti.State.PeerCertificates[0]), ",")
	}
	return "plaintext"
}

// grpcServer serves grpc.testing.TestService as an xDS-enabled gRPC
// server configured by the bootstrap: its listener (mTLS, RBAC) comes
// from the control plane through Istio's agent.
func grpcServer(args []string) error {
	fs := flag.NewFlagSet("grpc-server", flag.ExitOnError)
	listen := fs.String("listen", "", "address")
	version := fs.String("version", "v1", "version answered")
	fs.Parse(args)
	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		return errors.New("GRPC_XDS_BOOTSTRAP is not set (grpc-go reads it at start)")
	}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	serving := make(chan struct{})
	var once bool
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.ServingModeCallback(func(addr net.Addr, a xds.ServingModeChangeArgs) {
		fmt.Fprintf(os.Stderr, "istio-probe: %s serving mode %v %v\n", addr, a.Mode, a.Err)
		if a.Mode == 1 && !once { // connectivity.ServingModeServing
			once = true
			close(serving)
		}
	}))
	if err != nil {
		return err
	}
	testgrpc.RegisterTestServiceServer(srv, &testServer{version: *version})
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		<-serving
		emit(map[string]any{"serving": *listen})
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		srv.Stop()
	}()
	return srv.Serve(l)
}

// grpcClient calls target n times through grpc-go's xDS resolver and
// balancer configured by the bootstrap, printing each answer.
func grpcClient(args []string) error {
	fs := flag.NewFlagSet("grpc-client", flag.ExitOnError)
	target := fs.String("target", "", "xds:///host:port")
	n := fs.Int("n", 1, "calls")
	every := fs.Duration("every", 0, "pause between calls")
	timeout := fs.Duration("timeout", 10*time.Second, "per call")
	fs.Parse(args)
	if os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		return errors.New("GRPC_XDS_BOOTSTRAP is not set (grpc-go reads it at start)")
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer cc.Close()
	c := testgrpc.NewTestServiceClient(cc)
	for i := 0; i < *n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		var p peer.Peer
		resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.Peer(&p))
		cancel()
		if err != nil {
			st := status.Convert(err)
			emit(map[string]any{"call": i + 1, "code": st.Code().String(), "error": st.Message()})
		} else {
			emit(map[string]any{"call": i + 1, "code": "OK", "version": resp.Hostname, "server_saw": resp.ServerId, "server": peerID(&p)})
		}
		time.Sleep(*every)
	}
	return nil
}
