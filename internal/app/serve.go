package app

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/sds"
	sdsserver "github.com/wardenmesh/warden/sds/server"
	"github.com/wardenmesh/warden/token"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// Defaults of warden serve.
const (
	defaultCAListen    = "127.0.0.1:15012"
	defaultHTTPListen  = "127.0.0.1:15014"
	defaultTrustDomain = "cluster.local"
	defaultTokenIssuer = "warden"
	jwksPath           = "/.well-known/jwks.json"
	shutdownGrace      = 10 * time.Second
)

type serveFlags struct {
	dataDir, pluggedIn, trustDomain      string
	listen, httpListen                   string
	caKeyType, logLevel, tokenIssuerName string
	rootTTL, defaultTTL, maxTTL          time.Duration
	dnsNames                             string
	jwksFile, jwtIssuer, jwtAudiences    string
	allowDNS, allowIP                    bool
	configDir                            string
	debounce                             time.Duration
	kube                                 kubeFlags
	vault                                vaultFlags
	mesh                                 meshPolicyFlags
}

func runServe(ctx context.Context, e *env, args []string) error {
	var f serveFlags
	fs := e.flags("serve")
	fs.StringVar(&f.dataDir, "data-dir", e.dataDirDefault(), "standalone data directory (env WARDEN_DATA_DIR)")
	fs.StringVar(&f.pluggedIn, "plugged-in-dir", "", "use the CA in this directory (Istio cacerts layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)")
	fs.StringVar(&f.trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain")
	fs.StringVar(&f.listen, "listen", defaultCAListen, "CA gRPC API address (TLS)")
	fs.StringVar(&f.httpListen, "http-listen", defaultHTTPListen, "HTTP address for the JWKS and health checks; empty disables")
	fs.StringVar(&f.caKeyType, "ca-key-type", string(ca.ECDSAP256), "key type of a generated root: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-4096")
	fs.DurationVar(&f.rootTTL, "root-ttl", ca.DefaultRootTTL, "lifetime of a generated root")
	fs.DurationVar(&f.defaultTTL, "default-ttl", ca.DefaultTTL, "workload certificate lifetime when the request names none")
	fs.DurationVar(&f.maxTTL, "max-ttl", ca.DefaultMaxTTL, "longest workload certificate lifetime; longer requests are refused")
	fs.StringVar(&f.dnsNames, "server-dns-names", "localhost,warden.warden-system.svc", "comma-separated DNS SANs of the CA's serving certificate")
	fs.StringVar(&f.tokenIssuerName, "token-issuer", defaultTokenIssuer, "iss of tokens minted by 'warden token'")
	fs.StringVar(&f.jwksFile, "jwks-file", "", "also accept JWTs verified by this JWKS file (e.g. a Kubernetes API server's /openid/v1/jwks)")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "the iss required of tokens checked with --jwks-file")
	fs.StringVar(&f.jwtAudiences, "jwt-audiences", token.DefaultAudience, "comma-separated audiences accepted on bearer tokens")
	fs.BoolVar(&f.allowDNS, "allow-csr-dns-sans", false, "copy DNS SANs from workload CSRs into certificates")
	fs.BoolVar(&f.allowIP, "allow-csr-ip-sans", false, "copy IP SANs from workload CSRs into certificates")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.configDir, "config-dir", "", "standalone: serve the mesh configuration in this directory's YAML files (ServiceEntry, VirtualService, DestinationRule, authn and authz policies) over xDS; re-read on change")
	fs.DurationVar(&f.debounce, "push-debounce", 100*time.Millisecond, "quiet time after a configuration change before proxies are pushed")
	f.mesh.register(fs)
	f.kube.register(fs, e)
	f.vault.register(fs, e)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := f.mesh.check(); err != nil {
		return err
	}
	log, err := e.logger(f.logLevel)
	if err != nil {
		return err
	}
	s, err := newStandalone(ctx, f, log)
	if err != nil {
		return err
	}
	return s.run(ctx)
}

// standalone is a wired warden serve.
type standalone struct {
	log       *slog.Logger
	authority *ca.Authority
	origin    string                            // where the CA material came from
	issuer    *token.Issuer                     // standalone token issuer; nil in Kubernetes mode
	tasks     []func(ctx context.Context) error // background work (watchers, leader election)
	sds       *sdsserver.Server                 // central SDS
	config    *kube.ConfigWatcher               // mesh configuration (Kubernetes mode)
	registry  *kube.ServiceRegistry             // Services and EndpointSlices (Kubernetes mode)
	xds       *xdsserver.Server                 // ADS for sidecars and proxyless gRPC
	grpc      *grpc.Server
	caLis     net.Listener
	http      *http.Server
	httpLis   net.Listener
}

func newStandalone(ctx context.Context, f serveFlags, log *slog.Logger) (*standalone, error) {
	td, err := parseTrustDomain(f.trustDomain)
	if err != nil {
		return nil, err
	}
	kt, err := ca.ParseKeyType(f.caKeyType)
	if err != nil {
		return nil, fmt.Errorf("%w: --ca-key-type: %v", errUsage, err)
	}
	if (f.jwksFile == "") != (f.jwtIssuer == "") {
		return nil, fmt.Errorf("%w: --jwks-file and --jwt-issuer go together", errUsage)
	}
	useVault, err := f.vault.enabled()
	if err != nil {
		return nil, err
	}
	if useVault && f.pluggedIn != "" {
		return nil, fmt.Errorf("%w: --plugged-in-dir and --ca-upstream vault exclude each other", errUsage)
	}
	clock := ca.SystemClock{}
	caCfg := ca.Config{
		TrustDomain: td,
		DefaultTTL:  f.defaultTTL,
		MaxTTL:      f.maxTTL,
		CSR:         ca.CSRPolicy{AllowDNSNames: f.allowDNS, AllowIPAddresses: f.allowIP},
		Clock:       clock,
	}
	rootOpts := ca.CAOptions{Organization: td.Name(), CommonName: "warden root CA", KeyType: kt, TTL: f.rootTTL, MaxPathLen: -1}
	auds := splitList(f.jwtAudiences)
	s := &standalone{log: log}
	var auths []server.Authenticator
	if f.kube.enabled() {
		if auths, err = s.wireKubernetes(ctx, f, caCfg, rootOpts, useVault); err != nil {
			return nil, err
		}
	} else {
		if useVault {
			if err := checkNoLocalCA(f.dataDir); err != nil {
				return nil, err
			}
			err = s.wireVault(ctx, f.vault, caCfg, kt)
			if err == nil {
				err = writeRootCert(f.dataDir, s.authority.Material().Roots)
			}
			if err == nil {
				// A new Vault root is written where agents read it.
				s.authority.Bundles().Subscribe(func(roots []*x509.Certificate) {
					if err := writeRootCert(f.dataDir, roots); err != nil {
						log.Error("could not write the new trust bundle; agents reading it trust only the old roots", "error", err.Error())
					}
				})
			}
		} else {
			var m *ca.Material
			m, s.origin, err = loadMaterial(ctx, caSource{dataDir: f.dataDir, pluggedIn: f.pluggedIn, root: rootOpts}, clock)
			if err == nil {
				s.authority, err = ca.New(caCfg, m)
			}
		}
		if err != nil {
			return nil, err
		}
		if s.issuer, err = tokenIssuer(f.dataDir, f.tokenIssuerName, true); err != nil {
			return nil, err
		}
		auths = append(auths, &server.JWTAuthenticator{TrustDomain: td, Clock: clock, Verifier: &token.Verifier{
			Issuer: s.issuer.Name(), Audiences: auds, Keys: s.issuer.KeySet(), Clock: clock,
		}})
	}
	authority := s.authority
	m := authority.Material()
	// Renewal with the current SVID is tried first, as it needs no API call.
	auths = append([]server.Authenticator{&server.SVIDAuthenticator{Bundle: authority.Bundle, Clock: clock}}, auths...)
	if f.jwksFile != "" {
		ks, err := token.LoadKeySet(f.jwksFile)
		if err != nil {
			return nil, err
		}
		auths = append(auths, &server.JWTAuthenticator{TrustDomain: td, Clock: clock, Verifier: &token.Verifier{
			Issuer: f.jwtIssuer, Audiences: auds, Keys: ks, Clock: clock, Leeway: time.Minute,
		}})
	}
	srv, err := server.New(server.Config{Signer: authority, Authenticators: auths, Logger: log})
	if err != nil {
		return nil, err
	}
	serving := &server.ServingCert{Authority: authority, Clock: clock, Options: servingOptions(td, f.listen, splitList(f.dnsNames))}
	if _, err := serving.Current(); err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	// xds.ServerOptions: ADS responses of 32 KiB-1 MiB would each take a
	// zeroed 1 MiB buffer from gRPC's default pool.
	g := grpc.NewServer(append(xdsserver.ServerOptions(), server.Credentials(serving))...)
	srv.Register(g)
	// Central SDS on the same port, for sidecars without a node agent:
	// each stream authenticates like a certificate request.
	var central *sdsserver.Server
	var ads *xdsserver.Server
	sdsCache, err := sds.NewCache(ctx, sds.Config{Fetcher: &sds.LocalFetcher{Authority: authority}, Log: log,
		// Identities no SDS or ADS stream serves any more are dropped at
		// rotation rather than renewed for ever.
		InUse: func(id spiffeid.ID) bool {
			return (central != nil && central.InUse(id)) || (ads != nil && ads.InUse(id))
		},
		OnUpdate: func(v *sds.SVID) {
			if central != nil {
				central.Updated(v)
			}
			if ads != nil {
				ads.SecretsChanged(context.Background(), v.ID)
			}
		}})
	if err != nil {
		return nil, err
	}
	authenticate := func(ctx context.Context) (spiffeid.ID, error) {
		c, err := server.Authenticate(ctx, auths...)
		if err != nil {
			return spiffeid.ID{}, err
		}
		return c.ID, nil
	}
	central, err = sdsserver.New(ctx, sdsserver.Config{Cache: sdsCache, Identify: sdsserver.TokenIdentify(authenticate), Log: log,
		Roots: func() []*x509.Certificate { return authority.Bundle().X509Authorities() }})
	if err != nil {
		return nil, err
	}
	central.Register(g)
	s.sds = central
	roots := func() []*x509.Certificate { return authority.Bundle().X509Authorities() }
	// The xDS server reports a failure as Unauthenticated.
	if ads, err = s.wireXDS(ctx, f, td, authenticate, sdsCache, roots); err != nil {
		return nil, err
	}
	ads.Register(g)
	// The trust bundle's consumers in this process: SDS ROOTCA on every
	// central stream, and every ADS proxy's secrets.
	authority.Bundles().Subscribe(func([]*x509.Certificate) {
		central.RootsChanged()
		ads.RootsChanged(context.Background())
	})

	s.grpc = g
	if s.caLis, err = net.Listen("tcp", f.listen); err != nil {
		return nil, fmt.Errorf("CA API: %w", err)
	}
	if f.httpListen != "" {
		if s.httpLis, err = net.Listen("tcp", f.httpListen); err != nil {
			s.caLis.Close()
			return nil, fmt.Errorf("HTTP: %w", err)
		}
		s.http = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	fp := sha256.Sum256(m.Roots[0].Raw)
	log.Info("CA ready", "source", s.origin, "trustDomain", td.Name(),
		"root", m.Roots[0].Subject.String(), "rootSHA256", fmt.Sprintf("%X", fp[:]), "rootNotAfter", m.Roots[0].NotAfter.UTC())
	return s, nil
}

func servingOptions(td spiffeid.TrustDomain, listen string, dns []string) ca.ServingOptions {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	return ca.ServingOptions{
		ID:       spiffeid.RequireFromSegments(td, "ns", "warden-system", "sa", "warden"),
		DNSNames: dns,
		IPs:      ips,
	}
}

func (s *standalone) httpHandler() http.Handler {
	mux := http.NewServeMux()
	if s.issuer != nil {
		jwks, _ := json.Marshal(s.issuer.KeySet())
		mux.HandleFunc("GET "+jwksPath, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(jwks)
		})
	}
	mux.Handle("GET /metrics", metricsHandler(s.authority, ca.SystemClock{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.authority.Material() == nil {
			http.Error(w, "CA not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// run serves until ctx is done, then stops gracefully within
// shutdownGrace before forcing connections closed.
func (s *standalone) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	s.log.Info("serving CA API", "addr", s.caLis.Addr().String())
	g.Go(func() error { return s.grpc.Serve(s.caLis) })
	if s.http != nil {
		s.log.Info("serving JWKS and health checks", "url", "http://"+s.httpLis.Addr().String()+jwksPath)
		g.Go(func() error {
			if err := s.http.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	for _, task := range s.tasks {
		g.Go(func() error { return task(ctx) })
	}
	g.Go(func() error {
		<-ctx.Done()
		s.log.Info("shutting down")
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			s.grpc.Stop()
		}
		if s.http != nil {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			_ = s.http.Shutdown(sctx)
		}
		return nil
	})
	return g.Wait()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
