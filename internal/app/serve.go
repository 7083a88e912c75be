package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/gctune"
	"github.com/wardenmesh/warden/internal/kube/fedrelations"
	"github.com/wardenmesh/warden/internal/kube/gatewaycreds"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/internal/kube/webhook"
	"github.com/wardenmesh/warden/internal/metrics"
	"github.com/wardenmesh/warden/internal/rotation"
	"github.com/wardenmesh/warden/internal/source"
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
	jwksFile, jwtIssuer, audiences       string
	tokenLeeway, tokenMaxLifetime        time.Duration
	allowNewRoot, allowNewTokenKey       bool
	allowDNS, allowIP                    bool
	configDir                            string
	credentialsDir                       string
	metrics                              bool
	debounce                             time.Duration
	limits                               server.LimitConfig
	autoRotate                           float64
	istiodNames                          bool
	webhookListen                        string
	istiodNamespace, istiodRevision      string
	customHosts                          string // ISTIOD_CUSTOM_HOST: more serving names
	rotationGrace                        time.Duration
	kube                                 kubeFlags
	vault                                vaultFlags
	mesh                                 meshPolicyFlags
	federation                           federationFlags
}

func runServe(ctx context.Context, e *env, args []string) error {
	var f serveFlags
	fs := e.flags("serve")
	fs.StringVar(&f.dataDir, "data-dir", e.dataDirDefault(), "standalone data directory (env WARDEN_DATA_DIR)")
	fs.StringVar(&f.pluggedIn, "plugged-in-dir", "", "use the CA in this directory (Istio cacerts layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem)")
	fs.StringVar(&f.trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain")
	fs.StringVar(&f.listen, "listen", e.caAddr(), "CA port: the CA API, SDS and xDS over gRPC (TLS) (env WARDEN_ADDR)")
	fs.StringVar(&f.httpListen, "http-listen", e.httpAddr(), "HTTP port: the JWKS, health checks and metrics; empty disables (env WARDEN_HTTP_ADDR)")
	fs.StringVar(&f.caKeyType, "ca-key-type", string(ca.ECDSAP256), "key type of a generated root (or of the Vault-signed intermediate): "+ca.KeyTypeNames())
	fs.DurationVar(&f.rootTTL, "root-ttl", ca.DefaultRootTTL, "lifetime of a generated root")
	fs.DurationVar(&f.defaultTTL, "default-ttl", ca.DefaultTTL, "workload certificate lifetime when the request names none")
	fs.DurationVar(&f.maxTTL, "max-ttl", ca.DefaultMaxTTL, "longest workload certificate lifetime; longer requests are refused")
	fs.StringVar(&f.dnsNames, "server-dns-names", "localhost,warden.warden-system.svc", "comma-separated DNS SANs of the CA's serving certificate")
	fs.BoolVar(&f.istiodNames, "istiod-names", false, "also serve under istiod's names (istiod.<--istiod-namespace>.svc..., and istiod-<--istiod-revision>'s), so that an existing Istio data plane reaches warden where it dials istiod (deploy/istiod-compat)")
	fs.StringVar(&f.istiodNamespace, "istiod-namespace", "istio-system", "with --istiod-names: the namespace of the istiod Service the data plane dials")
	fs.StringVar(&f.istiodRevision, "istiod-revision", "", "with --istiod-names: the Istio revision whose istiod the data plane dials (its Service istiod-<revision>; env REVISION, as istiod's); empty or default: istiod alone")
	fs.StringVar(&f.webhookListen, "webhook-listen", "", "Kubernetes mode: serve Istio's validating admission webhook (HTTPS, /validate) here, e.g. 0.0.0.0:15017, and keep the caBundle of the ValidatingWebhookConfigurations that call warden's Service (with --istiod-names, first point istiod's at it); empty: off")
	fs.StringVar(&f.tokenIssuerName, "token-issuer", defaultTokenIssuer, "iss of tokens minted by 'warden token'")
	fs.StringVar(&f.jwksFile, "jwks-file", "", "also accept JWTs verified by this JWKS file (e.g. a Kubernetes API server's /openid/v1/jwks)")
	fs.StringVar(&f.jwtIssuer, "jwt-issuer", "", "the iss required of tokens checked with --jwks-file")
	fs.StringVar(&f.audiences, "token-audiences", token.DefaultAudience, "comma-separated audiences a workload's bearer token must carry (checked offline in standalone mode, by TokenReview in Kubernetes mode)")
	fs.StringVar(&f.audiences, "jwt-audiences", token.DefaultAudience, "the same as --token-audiences (its former standalone name)")
	fs.DurationVar(&f.tokenLeeway, "token-leeway", time.Minute, "clock skew allowed on bearer tokens' exp, nbf and iat")
	fs.DurationVar(&f.tokenMaxLifetime, "token-max-lifetime", token.DefaultMaxLifetime, "longest bearer token lifetime accepted (exp - iat); raise it for Kubernetes' extended tokens read with --jwks-file")
	fs.BoolVar(&f.allowNewRoot, "allow-new-root", false, "standalone: make a new root although the data directory once held another (its files were lost); every workload must then get the new bundle")
	fs.BoolVar(&f.allowNewTokenKey, "allow-new-token-key", false, "standalone: make a new token key although the data directory once held another; tokens minted before stop working")
	fs.BoolVar(&f.allowDNS, "allow-csr-dns-sans", false, "copy DNS SANs from workload CSRs into certificates")
	fs.BoolVar(&f.allowIP, "allow-csr-ip-sans", false, "copy IP SANs from workload CSRs into certificates")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.configDir, "config-dir", "", "standalone: serve the mesh configuration in this directory's YAML files (ServiceEntry, VirtualService, DestinationRule, authn and authz policies) over xDS; re-read on change")
	fs.BoolVar(&f.metrics, "metrics", true, "serve Prometheus metrics on the HTTP port's /metrics (false: none are kept)")
	fs.StringVar(&f.credentialsDir, "credentials-dir", "", "standalone: Gateway credentialName certificates, as <dir>/<namespace>/<name>/tls.crt, tls.key and ca.crt (the data of a Kubernetes Secret); re-read on change")
	fs.DurationVar(&f.debounce, "push-debounce", 100*time.Millisecond, "quiet time after a configuration change before proxies are pushed")
	fs.Float64Var(&f.autoRotate, "auto-rotate-root", 0.2, "standalone self-signed root: rotate it automatically when less than this fraction of its lifetime remains (0: never)")
	fs.DurationVar(&f.rotationGrace, "rotation-grace", 10*time.Minute, "root rotation: least time between publishing the new root and signing with it, for consumers that poll files (gRPC's file_watcher polls every 10m by default)")
	f.limits = server.DefaultLimits()
	fs.IntVar(&f.limits.ConnsPerPeer, "max-conns-per-peer", f.limits.ConnsPerPeer, "open connections one IP address may hold on the CA port; further ones are closed at once (0: no limit)")
	fs.Float64Var(&f.limits.ConnRatePerPeer, "max-conn-rate-per-peer", f.limits.ConnRatePerPeer, "new connections a second one IP address may open on the CA port, in bursts of twice as many (0: no limit)")
	fs.IntVar(&f.limits.StreamsPerPeer, "max-streams-per-peer", f.limits.StreamsPerPeer, "open gRPC streams one IP address may hold across its connections (0: no limit)")
	fs.IntVar(&f.limits.StreamsPerConn, "max-streams-per-conn", f.limits.StreamsPerConn, "concurrent streams per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; 0: no limit)")
	f.mesh.register(fs)
	f.federation.register(fs)
	f.kube.register(fs, e)
	f.vault.register(fs, e)
	if err := parse(fs, args); err != nil {
		return err
	}
	f.vault.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.vault.set[fl.Name] = true })
	fromIstiod, err := applyIstiodEnv(fs, e, f.vault.set)
	if err != nil {
		return err
	}
	f.customHosts = e.getenv("ISTIOD_CUSTOM_HOST")
	if err := f.mesh.check(); err != nil {
		return err
	}
	if err := f.federation.check(); err != nil {
		return err
	}
	if err := f.federation.checkFile(f.trustDomain); err != nil {
		return err
	}
	log, err := e.logger(f.logLevel)
	if err != nil {
		return err
	}
	logIstiodEnv(log, e, fromIstiod)
	if !f.kube.enabled() && f.vault.set["trusted-node-accounts"] {
		log.Warn("node accounts (--trusted-node-accounts, CA_TRUSTED_NODE_ACCOUNTS) may ask for other identities' certificates in Kubernetes mode only: standalone, warden has no pods to authorize against, issues a caller's own identity only, and refuses a request for another (ImpersonatedIdentity); their ztunnel xDS streams are served", "accounts", f.kube.trustedNodeAccounts)
	}
	s, err := newControlPlane(ctx, f, log)
	if err != nil {
		return err
	}
	gctune.Start(ctx) // a small live heap would be collected dozens of times a second
	return s.run(ctx)
}

// controlPlane is a wired warden serve (standalone or Kubernetes mode).
type controlPlane struct {
	log       *slog.Logger
	authority *ca.Authority
	origin    string                            // where the CA material came from
	issuer    *token.Issuer                     // standalone token issuer; nil in Kubernetes mode
	tasks     []func(ctx context.Context) error // background work (watchers, leader election)
	sds       *sdsserver.Server                 // central SDS
	config    *meshconfig.Watcher               // mesh configuration (Kubernetes mode)
	registry  *registry.Watcher                 // Services and EndpointSlices (Kubernetes mode)
	gwCreds   *gatewaycreds.Watcher             // Gateway credentialName Secrets (Kubernetes mode)
	metrics   *metrics.Registry                 // /metrics
	renewer   *ca.Renewer                       // Vault mode: the intermediate's renewer
	configDir *source.Dir                       // standalone --config-dir
	xds       *xdsserver.Server                 // ADS for sidecars and proxyless gRPC
	grpc      *grpc.Server
	caLis     net.Listener
	limiter   *server.Limiter    // the CA port's per-peer limits
	rotator   *rotation.Rotator  // the root's rotation
	vaultRot  *rotation.Upstream // Vault mode: a root rotated in Vault
	consumers *bundle.Set        // the trust bundle's consumers in this process
	http      *http.Server
	httpLis   net.Listener
	serving   *server.ServingCert // the CA port's certificate, also the webhook's
	webhook   *http.Server        // Istio's validating webhook (--webhook-listen)
	hookLis   net.Listener
	bundleEP  *http.Server        // the SPIFFE bundle endpoint (--bundle-endpoint-listen)
	federated *federation.Bundles // foreign trust domains' bundles (--federation-file); nil: none
	// fedStore keeps them in the API server in Kubernetes mode, where
	// only the leader polls the peers; nil: the data directory.
	fedStore federation.Store
	// fedObjects reads the ClusterFederatedTrustDomain objects in
	// Kubernetes mode (their relationships beside the file's).
	fedObjects *fedrelations.Watcher
	bundleLis  net.Listener
	// admin answers 'ca rotate' on adminLis, the data directory's admin
	// socket (standalone and Vault modes).
	admin    adminServer
	adminLis net.Listener
	// authorizer decides which identity a caller's certificate is for:
	// Kubernetes mode's node authorizer, or nil (SelfOnly).
	authorizer server.Authorizer
}

// serveOptions are serve's flags checked and parsed, before anything is
// read, written or listened on.
type serveOptions struct {
	f        serveFlags
	td       spiffeid.TrustDomain
	keyType  ca.KeyType
	useVault bool
	clock    ca.Clock
	caCfg    ca.Config
	rootOpts ca.CAOptions
	serving  ca.ServingOptions // the CA's own names, reserved in caCfg.CSR
}

func (f serveFlags) options() (*serveOptions, error) {
	td, err := parseTrustDomain(f.trustDomain)
	if err != nil {
		return nil, err
	}
	kt, err := ca.ParseKeyType(f.caKeyType)
	if err != nil {
		return nil, fmt.Errorf("%w: --ca-key-type: %v", errUsage, err)
	}
	if f.tokenLeeway < 0 || f.tokenLeeway > time.Hour || f.tokenMaxLifetime <= 0 {
		return nil, fmt.Errorf("%w: --token-leeway must be from 0 to 1h and --token-max-lifetime positive", errUsage)
	}
	if f.limits.ConnsPerPeer < 0 || f.limits.StreamsPerPeer < 0 || f.limits.ConnRatePerPeer < 0 || f.limits.StreamsPerConn < 0 {
		return nil, fmt.Errorf("%w: --max-conns-per-peer, --max-conn-rate-per-peer, --max-streams-per-peer and --max-streams-per-conn must be 0 (no limit) or more", errUsage)
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
	if _, err := f.kube.nodeAccounts(); err != nil {
		return nil, err
	}
	if f.webhookListen != "" && !f.kube.enabled() {
		return nil, fmt.Errorf("%w: --webhook-listen serves Istio's validating webhook to a Kubernetes API server: it needs --kubernetes", errUsage)
	}
	clock := ca.SystemClock{}
	// No workload may get a name or address the CA serves on: clients
	// that check the CA by host name would take that workload for it.
	dns := append(splitList(f.dnsNames), splitList(f.customHosts)...)
	if f.istiodNames {
		names, err := istiodServiceNames(f.istiodNamespace, f.istiodRevision)
		if err != nil {
			return nil, err
		}
		dns = append(dns, names...)
	}
	if hook := webhook.ServiceName + "." + f.kube.namespace + ".svc"; f.webhookListen != "" && !slices.Contains(dns, hook) {
		// The name the API server checks when it calls the webhook
		// through warden's Service in its namespace.
		dns = append(dns, hook)
	}
	serving := servingOptions(td, f.listen, dns)
	reserved := append([]string{}, serving.DNSNames...)
	for _, ip := range serving.IPs {
		reserved = append(reserved, ip.String())
	}
	return &serveOptions{f: f, td: td, keyType: kt, useVault: useVault, clock: clock, serving: serving,
		caCfg: ca.Config{
			TrustDomain: td,
			DefaultTTL:  f.defaultTTL,
			MaxTTL:      f.maxTTL,
			CSR:         ca.CSRPolicy{AllowDNSNames: f.allowDNS, AllowIPAddresses: f.allowIP, Reserved: reserved},
			Clock:       clock,
		},
		rootOpts: ca.CAOptions{Organization: td.Name(), CommonName: rootCommonName, KeyType: kt, TTL: f.rootTTL, MaxPathLen: -1, Clock: clock},
	}, nil
}

// rootCommonName starts a generated root's name; the time it is made
// follows, to the millisecond ("warden root CA 2026-11-29T15:03:06.042Z"),
// so that the two roots of a rotation, side by side in the bundle, differ
// by name and not only by fingerprint, even when the second is made in
// the same second as the first. Roots made before are kept as they are.
const rootCommonName = "warden root CA"

// newRoot generates a self-signed root named for when it is made.
func newRoot(opts ca.CAOptions) (*ca.Material, error) {
	if opts.Clock == nil {
		opts.Clock = ca.SystemClock{}
	}
	opts.CommonName = rootCommonName + " " + opts.Clock.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
	return ca.NewSelfSigned(opts)
}

// newControlPlane wires warden serve, in standalone or Kubernetes mode:
// the authority and the callers' authenticators, the gRPC services on the
// CA port (CA API, central SDS, ADS), the trust bundle's subscribers, and
// the listeners.
func newControlPlane(ctx context.Context, f serveFlags, log *slog.Logger) (*controlPlane, error) {
	o, err := f.options()
	if err != nil {
		return nil, err
	}
	s := &controlPlane{log: log, consumers: &bundle.Set{}}
	if f.metrics {
		s.metrics = metrics.New()
	}
	// A replica that cannot listen must fail before it writes shared state
	// (istio-ca-secret, a data directory): try the ports now. They are
	// bound for good once everything is ready, so that a client that can
	// connect finds the CA working.
	for _, p := range []struct{ what, addr string }{{"CA API", f.listen}, {"HTTP", f.httpListen}, {"webhook", f.webhookListen}, {"bundle endpoint", f.federation.listen}} {
		if p.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", p.addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.what, err)
		}
		l.Close()
	}
	auths, err := s.loadAuthority(ctx, o)
	if err != nil {
		return nil, err
	}
	authority, clock, td := s.authority, o.clock, o.td
	m := authority.Material()
	// Renewal with the current SVID is tried first, as it needs no API call.
	auths = append([]server.Authenticator{&server.SVIDAuthenticator{Bundle: authority.Bundle, Clock: clock}}, auths...)
	if f.jwksFile != "" {
		ks, err := token.LoadKeySet(f.jwksFile)
		if err != nil {
			return nil, err
		}
		auths = append(auths, &server.JWTAuthenticator{TrustDomain: td, Clock: clock, Verifier: &token.Verifier{
			Issuer: f.jwtIssuer, Audiences: splitList(f.audiences), Keys: ks, Clock: clock, Leeway: f.tokenLeeway, MaxLifetime: f.tokenMaxLifetime,
		}})
	}
	if err := s.wireFederation(f, td); err != nil {
		return nil, err
	}
	if err := s.wireServices(ctx, o, auths); err != nil {
		return nil, err
	}
	if err := s.wireBundleEndpoint(f.federation); err != nil {
		return nil, err
	}
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
	if f.webhookListen != "" {
		if s.hookLis, err = net.Listen("tcp", f.webhookListen); err != nil {
			s.caLis.Close()
			if s.httpLis != nil {
				s.httpLis.Close()
			}
			return nil, fmt.Errorf("webhook: %w", err)
		}
		s.webhook = s.webhookServer()
	}
	if err := s.listenBundleEndpoint(f.federation.listen); err != nil {
		for _, l := range []net.Listener{s.caLis, s.httpLis, s.hookLis} {
			if l != nil {
				l.Close()
			}
		}
		return nil, err
	}
	if s.admin != nil {
		if s.adminLis, err = rotation.ListenAdmin(f.dataDir); err != nil {
			for _, l := range []net.Listener{s.caLis, s.httpLis, s.hookLis, s.bundleLis} {
				if l != nil {
					l.Close()
				}
			}
			return nil, err
		}
	}
	log.Info("CA ready", "source", s.origin, "trustDomain", td.Name(),
		"root", m.Roots[0].Subject.String(), "rootSHA256", ca.RootFingerprint(m), "rootNotAfter", m.Roots[0].NotAfter.UTC())
	return s, nil
}

// loadAuthority makes the authority from the mode's CA material
// (Kubernetes Secrets, Vault, a plugged-in directory or the data
// directory) and returns the mode's token authenticators.
func (s *controlPlane) loadAuthority(ctx context.Context, o *serveOptions) ([]server.Authenticator, error) {
	f := o.f
	if f.kube.enabled() {
		return s.wireKubernetes(ctx, f, o.caCfg, o.rootOpts, o.useVault)
	}
	var err error
	switch {
	case o.useVault:
		if err := checkNoLocalCA(f.dataDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
			return nil, err
		}
		vr := vaultRotation{store: rotation.FileUpstreamStore{Path: filepath.Join(f.dataDir, rotation.VaultStateFile)}, consumers: s.consumers.All}
		if err := s.wireVault(ctx, f, o.caCfg, o.keyType, vr); err != nil {
			return nil, err
		}
		s.admin = s.vaultRot
		if err := writeRootCert(f.dataDir, s.authority.Material().Roots); err != nil {
			return nil, err
		}
		// A new Vault root is written where agents read it.
		s.consumers.Add(bundle.Func{Kind: "root-cert.pem", In: bundle.PerReplica, OnChange: func(roots []*x509.Certificate) {
			if err := writeRootCert(f.dataDir, roots); err != nil {
				s.log.Error("could not write the new trust bundle; agents reading it trust only the old roots", "error", err.Error())
			}
		}})
	default:
		var m *ca.Material
		if m, s.origin, err = loadMaterial(ctx, caSource{dataDir: f.dataDir, pluggedIn: f.pluggedIn, root: o.rootOpts, allowNewRoot: f.allowNewRoot}, o.clock); err != nil {
			return nil, err
		}
		if s.authority, err = ca.New(o.caCfg, m); err != nil {
			return nil, err
		}
		if f.pluggedIn != "" {
			dir := f.pluggedIn
			// Rotated by the operator's edits; the admin socket reports
			// who holds each root.
			s.rotator = rotation.New(rotation.Config{Log: s.log, Authority: s.authority, CA: o.caCfg, Plugged: dir, Consumers: s.consumers})
			s.tasks = append(s.tasks, func(ctx context.Context) error {
				watchPluggedInDir(ctx, dir, s.authority, o.clock, s.log, 2*time.Second)
				return nil
			})
			s.admin = s.rotator
		}
		if f.pluggedIn == "" {
			rootOpts := o.rootOpts
			s.rotator = rotation.New(rotation.Config{Log: s.log, Authority: s.authority, CA: o.caCfg, Consumers: s.consumers,
				Store: &rotation.DirStore{Dir: f.dataDir, Clock: o.clock}, NewCA: func() (*ca.Material, error) { return newRoot(rootOpts) },
				Grace: f.rotationGrace, AutoFraction: f.autoRotate})
			if err := s.rotator.Load(ctx, m); err != nil {
				return nil, fmt.Errorf("CA store %s: %w", f.dataDir, err)
			}
			s.tasks = append(s.tasks, s.rotator.Run)
			s.admin = s.rotator
		}
	}
	if s.issuer, err = tokenIssuer(f.dataDir, f.tokenIssuerName, true, f.allowNewTokenKey); err != nil {
		return nil, err
	}
	return []server.Authenticator{&server.JWTAuthenticator{TrustDomain: o.td, Clock: o.clock, Verifier: &token.Verifier{
		Issuer: s.issuer.Name(), Audiences: splitList(f.audiences), Keys: s.issuer.KeySet(), Clock: o.clock,
		Leeway: f.tokenLeeway, MaxLifetime: f.tokenMaxLifetime,
	}}}, nil
}

// wireServices registers the CA API, central SDS and ADS on one gRPC
// server and subscribes SDS and ADS to the trust bundle.
func (s *controlPlane) wireServices(ctx context.Context, o *serveOptions, auths []server.Authenticator) error {
	f, authority, log := o.f, s.authority, s.log
	cfg := server.Config{Signer: authority, Authenticators: auths, Authorizer: s.authorizer, Logger: log}
	if s.metrics != nil {
		cfg.Observer = s.metrics
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	var issuer server.ServingIssuer = authority
	if s.rotator != nil {
		issuer = s.rotator.Serving()
	}
	serving := &server.ServingCert{Authority: issuer, Clock: o.clock, Options: o.serving, Log: log}
	if _, err := serving.Current(); err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	s.serving = serving
	// xds.ServerOptions: ADS responses of 32 KiB-1 MiB would each take a
	// zeroed 1 MiB buffer from gRPC's default pool.
	lim := f.limits
	lim.Log = log
	s.limiter = server.NewLimiter(lim)
	g := grpc.NewServer(append(append(xdsserver.ServerOptions(), s.limiter.ServerOptions()...), server.Credentials(serving))...)
	srv.Register(g)
	// Central SDS on the same port, for sidecars without a node agent:
	// each stream authenticates like a certificate request.
	sdsCache, err := sds.NewCache(ctx, sds.Config{Fetcher: &sds.LocalFetcher{Authority: authority}, Log: log})
	if err != nil {
		return err
	}
	authenticate := func(ctx context.Context) (spiffeid.ID, error) {
		c, err := server.Authenticate(ctx, auths...)
		if errors.Is(err, server.ErrUnavailable) {
			// Not a forged credential: the stream may retry.
			return spiffeid.ID{}, status.Error(codes.Unavailable, err.Error())
		}
		if err != nil {
			return spiffeid.ID{}, err
		}
		return c.ID, nil
	}
	// The trust bundle's owner answers for ROOTCA.
	roots := authority.Bundles().Roots
	sdsCfg := sdsserver.Config{Cache: sdsCache, Identify: sdsserver.TokenIdentify(authenticate), Log: log, Roots: roots}
	if s.federated != nil {
		// Foreign bundles by trust domain ID, to the namespaces that
		// federate; ROOTCA stays the local bundle.
		sdsCfg.Federated = s.federated.ForID
	}
	central, err := sdsserver.New(ctx, sdsCfg)
	if err != nil {
		return err
	}
	if s.federated != nil {
		s.federated.Subscribe(central.FederationChanged)
	}
	central.Register(g)
	s.sds = central
	// The xDS server reports a failure as Unauthenticated.
	ads, err := s.wireXDS(ctx, f, o.td, authenticate, sdsCache, roots)
	if err != nil {
		return err
	}
	ads.Register(g)
	// New SVIDs reach both servers; identities neither serves any more are
	// dropped at rotation rather than renewed for ever.
	sdsCache.Watch(central.Updated, central.InUse)
	sdsCache.Watch(func(v *sds.SVID) { ads.SecretsChanged(context.Background(), v.ID) }, ads.InUse)
	// The trust bundle's consumers in every replica: SDS ROOTCA on every
	// central stream, and every ADS proxy's secrets; a rotation
	// activates once every stream holds the new root. All of the
	// process's consumers are subscribed here, once.
	s.consumers.Add(
		bundle.Func{Kind: "sds", In: bundle.PerReplica, OnChange: func([]*x509.Certificate) { central.RootsChanged() }, Holders: central.Missing},
		bundle.Func{Kind: "ads", In: bundle.PerReplica, OnChange: func([]*x509.Certificate) { ads.RootsChanged(context.Background()) }, Holders: ads.Missing},
	)
	s.consumers.Subscribe(authority.Bundles())
	// When the root new leaves chain to changes (a rotation activated, a
	// cacerts swap, a new Vault root), every leaf the servers hold is
	// renewed at once rather than at half-life.
	signing := authority.Bundles().Roots()
	authority.Bundles().Subscribe(func(roots []*x509.Certificate) {
		if len(roots) == 0 || (len(signing) > 0 && roots[0].Equal(signing[0])) {
			signing = roots
			return
		}
		if !slices.ContainsFunc(signing, roots[0].Equal) {
			log.Error("the CA now signs under a root the trust bundle did not hold before: workloads that trust only the old roots will refuse the new certificates until they get the new bundle. Publish a new root before signing with it (docs/ca.md, Rotating the root)",
				"root", roots[0].Subject.String())
		}
		log.Info("the CA signs under a new root: renewing every certificate it serves", "root", roots[0].Subject.String())
		signing = roots
		sdsCache.RenewAll()
	})

	s.grpc = g
	return nil
}

// metricsHandler registers what is known once everything is wired and
// serves the registry.
func (s *controlPlane) metricsHandler() http.Handler {
	if s.metrics == nil {
		return http.NotFoundHandler()
	}
	s.metrics.SDS(s.sds.Streams, s.sds.Pushes)
	s.metrics.Authority(s.authority, ca.SystemClock{})
	switch {
	case s.rotator != nil:
		s.metrics.Rotation(s.rotator.PhaseIndex, s.rotator.Started)
	case s.vaultRot != nil:
		s.metrics.Rotation(s.vaultRot.PhaseIndex, s.vaultRot.Started)
	}
	// Vault's series exist in Vault mode only; every other series exists
	// in every mode (zero where it cannot move), so one dashboard and one
	// rule file fit every install (docs/metrics.md).
	if s.renewer != nil {
		s.metrics.Vault(s.renewer.Counts)
	}
	if s.xds != nil {
		s.metrics.XDSReports(s.xds.Reports)
	}
	rejected, reloads := func() int { return 0 }, func() uint64 { return 0 }
	if s.config != nil {
		rejected = func() int { return len(s.config.Rejected()) }
	}
	if s.configDir != nil {
		reloads = s.configDir.Failures
	}
	s.metrics.ConfigRejected(rejected, reloads)
	return s.metrics.Handler()
}

// istiodServiceNames are the names Istio's agent dials and verifies for
// istiod in namespace ns (its default CA_ADDR and discovery address is
// istiod.istio-system.svc, and it puts that name in place of localhost),
// and, for a revision other than default, those of the revision's
// Service istiod-<revision>, which the revision's injected proxies dial
// (Istio names revisioned istiod Services so, and istiod puts
// istiod-<revision>.<ns>.svc in its own certificate: pilot/pkg/bootstrap,
// getDNSNames).
func istiodServiceNames(ns, revision string) ([]string, error) {
	if !dnsLabel.MatchString(ns) {
		return nil, fmt.Errorf("%w: --istiod-namespace %q is not a namespace name", errUsage, ns)
	}
	if revision != "" && !dnsLabel.MatchString(revision) {
		return nil, fmt.Errorf("%w: --istiod-revision %q is not a revision name (a DNS label)", errUsage, revision)
	}
	services := []string{"istiod"}
	if revision != "" && revision != "default" {
		services = append(services, "istiod-"+revision)
	}
	var out []string
	for _, svc := range services {
		out = append(out, svc+"."+ns+".svc", svc+"."+ns+".svc.cluster.local", svc+"."+ns, svc)
	}
	return out, nil
}

// dnsLabel is a DNS label as Kubernetes names namespaces (RFC 1123).
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func servingOptions(td spiffeid.TrustDomain, listen string, dns []string) ca.ServingOptions {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if host, _, err := net.SplitHostPort(listen); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	return ca.ServingOptions{
		ID:       client.ControlPlaneID(td),
		DNSNames: dns,
		IPs:      ips,
	}
}

func (s *controlPlane) httpHandler() http.Handler {
	mux := http.NewServeMux()
	if s.issuer != nil {
		jwks, _ := json.Marshal(s.issuer.KeySet())
		mux.HandleFunc("GET "+jwksPath, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(jwks)
		})
	}
	mux.Handle("GET /metrics", s.metricsHandler())
	if s.xds != nil {
		// warden check asks which proxies have not ACKed their latest
		// configuration (node IDs and xDS types only).
		mux.HandleFunc("GET /debug/proxies", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(s.xds.Status())
		})
	}
	if s.federated != nil {
		// warden check reports stale federation relationships.
		mux.HandleFunc("GET /debug/federation", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(federationStatus(s.federated.Status()))
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// webhookServer is Istio's validating webhook over HTTPS, with the CA
// port's serving certificate (istiod serves its webhooks with its own):
// the API server checks it against the caBundle warden keeps in the
// webhook configurations, under the name of the Service it calls
// (warden.<namespace>.svc, a default --server-dns-names).
func (s *controlPlane) webhookServer() *http.Server {
	v := &webhook.Validator{Log: s.log}
	if s.metrics != nil {
		v.Observer = s.metrics
	}
	return &http.Server{
		Handler:           v.Handler(),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.serving.GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug), // handshakes of port probes
	}
}

// ready says whether the CA can sign now (/readyz), and if not why: no
// material yet, or the signing certificate expired, with, in Vault mode,
// why its renewal fails.
func (s *controlPlane) ready() error {
	err := s.authority.Ready()
	if err == nil {
		return nil
	}
	if s.renewer != nil {
		if last := s.renewer.LastError(); last != nil {
			return fmt.Errorf("%w; renewing it fails: %v", err, last)
		}
	}
	return err
}

// adminServer serves the admin socket: a Rotator, or in Vault mode an
// Upstream.
type adminServer interface {
	ServeAdmin(ctx context.Context, l net.Listener) error
}

// run serves until ctx is done, then stops gracefully within
// shutdownGrace before forcing connections closed.
func (s *controlPlane) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	s.log.Info("serving CA API", "addr", s.caLis.Addr().String())
	g.Go(func() error {
		// A shutdown that comes before Serve starts makes it return
		// ErrServerStopped: that is a clean stop, not a failure.
		if err := s.grpc.Serve(s.limiter.Listen(s.caLis)); !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	if s.http != nil {
		base := "http://" + s.httpLis.Addr().String()
		if s.issuer != nil {
			s.log.Info("serving JWKS, health checks and metrics", "url", base+jwksPath, "health", base+"/healthz")
		} else {
			// Kubernetes mode mints no tokens: no JWKS to serve.
			s.log.Info("serving health checks and metrics", "url", base+"/healthz")
		}
		g.Go(func() error {
			if err := s.http.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if s.webhook != nil {
		s.log.Info("serving Istio's validating webhook", "addr", s.hookLis.Addr().String(), "paths", strings.Join(webhook.Paths, " "))
		g.Go(func() error {
			if err := s.webhook.ServeTLS(s.hookLis, "", ""); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if s.bundleEP != nil {
		s.log.Info("serving the SPIFFE bundle endpoint", "url", "https://"+s.bundleLis.Addr().String()+"/")
		g.Go(func() error {
			if err := s.bundleEP.ServeTLS(s.bundleLis, "", ""); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if s.admin != nil {
		g.Go(func() error { return s.admin.ServeAdmin(ctx, s.adminLis) })
	}
	for _, task := range s.tasks {
		g.Go(func() error {
			// A task stopped by the shutdown (say, during its first list
			// from the API server) has not failed.
			err := task(ctx)
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
				return nil
			}
			return err
		})
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
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		for _, h := range []*http.Server{s.http, s.webhook, s.bundleEP} {
			if h != nil {
				_ = h.Shutdown(sctx)
			}
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
