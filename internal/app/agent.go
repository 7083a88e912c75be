package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	caserver "github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/metrics"
	"github.com/wardenmesh/warden/internal/unixsock"
	"github.com/wardenmesh/warden/sds"
	sdsserver "github.com/wardenmesh/warden/sds/server"
	"github.com/wardenmesh/warden/token"
)

type agentFlags struct {
	addr, serverName, tokenFile      string
	caID                             *string
	sdsSocket, wapiSocket, outDir    string
	keyType, logLevel, metricsListen string
	anchors                          []*x509.Certificate // --root-cert's
	ttl                              time.Duration
	nodeAgent                        bool
	socketMode                       uint
}

func runAgent(ctx context.Context, e *env, args []string) error {
	var f agentFlags
	fs := e.flags("agent")
	fs.StringVar(&f.addr, "ca", e.caAddr(), "warden's CA port, host:port (env WARDEN_ADDR)")
	rootFile, dataDir := e.trustAnchorFlags(fs)
	fs.StringVar(&f.serverName, "server-name", "", "expected name in the CA's certificate (default: host of --ca)")
	f.caID = caIDFlag(fs)
	fs.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/tokens/istio-token", "the workload's service-account token (projected, audience istio-ca); not read with --node-agent, whose callers each send their own")
	fs.StringVar(&f.sdsSocket, "sds-socket", "warden-agent/sds.sock", "Unix socket to serve SDS on")
	fs.StringVar(&f.wapiSocket, "workload-api-socket", "warden-agent/workload.sock", "Unix socket for the SPIFFE Workload API; empty disables")
	fs.StringVar(&f.outDir, "output-dir", "", "also write cert-chain.pem, key.pem and root-cert.pem here (for proxyless gRPC's file_watcher)")
	fs.StringVar(&f.keyType, "key-type", string(ca.ECDSAP256), "workload key type: "+ca.KeyTypeNames())
	fs.DurationVar(&f.ttl, "ttl", 0, "requested certificate lifetime (0: the CA's default)")
	fs.BoolVar(&f.nodeAgent, "node-agent", false, "serve several workloads: each SDS stream authenticates with its own token in gRPC metadata")
	f.socketMode = 0o600
	fs.Var((*octalFlag)(&f.socketMode), "socket-mode", "permissions of the sockets: an octal `mode`, 0600, or 0660 to share with a group")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics (warden_agent_*) on this address's /metrics, e.g. 127.0.0.1:15020; empty: off")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	anchors, err := e.trustAnchors(*rootFile, *dataDir)
	if err != nil {
		return err
	}
	f.anchors = anchors
	log, err := e.logger(f.logLevel)
	if err != nil {
		return err
	}
	a, err := newAgent(ctx, f, log)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

// check refuses flag mistakes with the flag named: one socket path for
// both services, a socket path too long to bind, a mode that would open
// the sockets to everyone.
func (f *agentFlags) check() error {
	if f.wapiSocket != "" && filepath.Clean(f.wapiSocket) == filepath.Clean(f.sdsSocket) {
		return fmt.Errorf("%w: --sds-socket and --workload-api-socket are both %s; give each its own path", errUsage, f.sdsSocket)
	}
	for flag, p := range map[string]string{"--sds-socket": f.sdsSocket, "--workload-api-socket": f.wapiSocket} {
		if abs, err := filepath.Abs(p); err == nil && p != "" && len(abs) > unixsock.MaxPath {
			return fmt.Errorf("%w: %s %s is %d bytes long; Unix sockets allow at most %d: choose a shorter path", errUsage, flag, abs, len(abs), unixsock.MaxPath)
		}
	}
	if f.socketMode&^0o777 != 0 || f.socketMode&0o007 != 0 {
		return fmt.Errorf("%w: --socket-mode %#o: want permissions for owner and group only (0600 or 0660)", errUsage, f.socketMode)
	}
	return nil
}

// octalFlag is a uint flag read and shown in octal (0600, not 384).
type octalFlag uint

func (o *octalFlag) String() string { return fmt.Sprintf("%#o", uint(*o)) }

func (o *octalFlag) Set(s string) error {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return fmt.Errorf("not an octal mode: %q", s)
	}
	*o = octalFlag(v)
	return nil
}

// agent is a wired 'warden agent'.
type agent struct {
	log       *slog.Logger
	f         agentFlags
	cache     *sds.Cache
	fetcher   *client.Fetcher
	sds       *sdsserver.Server
	wapi      *sdsserver.WorkloadAPI
	fileRoots []*x509.Certificate
	bundles   *ca.Bundles // the CA's bundle as followed (followBundle); until then the trust anchors file plus the roots the CA names
	streamed  []*x509.Certificate
	foreign   map[spiffeid.TrustDomain][]*x509.Certificate // the foreign bundles the CA sends for the workload's namespace
	mu        sync.Mutex
	self      *sds.SVID           // the workload's SVID (single-workload mode)
	tokens    caserver.TokenCache // node agent: token hash -> identity
	nodeFed   *nodeBundles        // node agent: the bundles, per namespace
}

func newAgent(ctx context.Context, f agentFlags, log *slog.Logger) (*agent, error) {
	kt, err := ca.ParseKeyType(f.keyType)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	pool := certPool(f.anchors)
	fileRoots := f.anchors
	a := &agent{log: log, f: f, fileRoots: fileRoots, bundles: ca.NewBundles(fileRoots)}
	if f.serverName == "" {
		f.serverName, _, _ = net.SplitHostPort(f.addr)
	}
	serverID, err := parseCAID(*f.caID)
	if err != nil {
		return nil, err
	}
	a.fetcher = &client.Fetcher{Addr: f.addr, Roots: pool, RootPool: a.caPool, ServerName: f.serverName, ServerID: serverID, KeyType: kt, TTL: f.ttl}
	// A failed rotation names what it depends on: the CA, and the token
	// file. A node agent has none: each stream brings its workload's
	// token, and the agent's own must never stand in for a caller's.
	fetchAttrs := []slog.Attr{slog.String("ca", f.addr)}
	cacheCfg := sds.Config{Fetcher: a.fetcher, Log: log, OnUpdate: a.updated}
	if f.nodeAgent {
		// A node agent outlives its callers: an identity no stream serves
		// is dropped at rotation (as serve's), and its namespace's bundle
		// stream closes with the last of it.
		a.nodeFed = newNodeBundles(ctx, a)
		cacheCfg.OnDrop = a.nodeFed.remove
	} else {
		a.fetcher.TokenFile = f.tokenFile
		fetchAttrs = append(fetchAttrs, slog.String("tokenFile", f.tokenFile))
	}
	cacheCfg.FetchAttrs = fetchAttrs
	a.cache, err = sds.NewCache(ctx, cacheCfg)
	if err != nil {
		return nil, err
	}
	a.fetcher.Current = a.cache.Current
	identify := a.identifyByToken
	if !f.nodeAgent {
		// The agent may start before the CA: the first certificate is
		// retried with backoff, and the sockets appear only once it came
		// (their presence is the agent's readiness).
		svid, err := a.firstSVID(ctx)
		if err != nil {
			return nil, err
		}
		log.Info("workload identity", "id", svid.ID.String(), "notAfter", svid.Certs[0].NotAfter)
		a.mu.Lock()
		a.self = svid
		a.mu.Unlock()
		a.cache.Put(svid)
		identify = sdsserver.FixedIdentify(svid.ID)
	}
	// Relayed by name (spiffe://<td>), as the CA sent them: the
	// workload's, or (node agent) those of the stream's namespace.
	sdsCfg := sdsserver.Config{Cache: a.cache, Identify: identify, Roots: a.roots, Log: log,
		Federated: func(spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate { return a.federated() }}
	if f.nodeAgent {
		sdsCfg.Federated = a.nodeFed.foreign
	}
	a.sds, err = sdsserver.New(ctx, sdsCfg)
	if err != nil {
		return nil, err
	}
	if f.nodeAgent {
		a.cache.Watch(nil, a.sds.InUse)
	}
	if f.wapiSocket != "" && !f.nodeAgent {
		a.wapi = &sdsserver.WorkloadAPI{Current: a.current, Roots: a.roots, TrustDomain: a.self.ID.TrustDomain(), Federated: a.federated}
	}
	// A new bundle reaches every SDS stream's ROOTCA, the Workload API and
	// the files; when the CA signs under a root the SVID does not chain
	// to (a rotation activated), the SVID is renewed at once.
	a.bundles.Subscribe(a.rootsChanged)
	return a, nil
}

// updated runs after every new SVID: push to SDS and Workload API streams,
// and write the files.
func (a *agent) updated(s *sds.SVID) {
	if a.nodeFed != nil {
		a.nodeFed.add(s.ID)
	}
	a.mu.Lock()
	if a.self != nil && a.self.ID == s.ID {
		a.self = s
	}
	a.mu.Unlock()
	if a.sds != nil {
		a.sds.Updated(s)
	}
	a.mu.Lock()
	if a.streamed == nil {
		a.mu.Unlock()
		a.bundles.Set(ca.MergeRoots(a.fileRoots, s.Roots))
	} else {
		a.mu.Unlock()
	}
	if a.wapi != nil {
		a.wapi.Updated()
	}
	if a.f.outDir != "" && !a.f.nodeAgent {
		if err := sds.WriteFiles(a.f.outDir, s, a.roots()); err != nil {
			a.log.Error("writing certificate files", "dir", a.f.outDir, "error", err.Error())
		}
		a.writeBundleMap(a.roots())
	}
}

// current is the workload's SVID while it is valid: an expired one is
// never served (the Workload API then sends the bundle alone).
func (a *agent) current() *sds.SVID {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.self == nil || !time.Now().Before(a.self.Certs[0].NotAfter) {
		return nil
	}
	return a.self
}

// firstSVID fetches the workload's first SVID, retrying (1 s doubling to
// 30 s) while the CA cannot be reached, until ctx is done.
func (a *agent) firstSVID(ctx context.Context) (*sds.SVID, error) {
	backoff := time.Second
	for {
		svid, err := a.fetcher.Fetch(ctx, spiffeid.ID{})
		if err == nil {
			return svid, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("first certificate from %s: %w", a.f.addr, err)
		}
		a.log.Warn("no first certificate yet; retrying (the sockets appear once it comes)", "ca", a.f.addr, "tokenFile", a.f.tokenFile,
			"retryIn", backoff.String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("first certificate from %s: %w", a.f.addr, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// roots is the bundle: the trust anchors file plus the roots the CA last
// named.
func (a *agent) roots() []*x509.Certificate { return a.bundles.Roots() }

// identifyByToken (node-agent mode) learns a stream's identity by having
// the CA check its token: the answer is a certificate for exactly that
// identity, which the cache then keeps fresh over mTLS. A stream without
// a well-formed token is refused here; the agent's own token file is
// never asked (the fetcher has none in this mode).
func (a *agent) identifyByToken(ctx context.Context) (spiffeid.ID, error) {
	tok, err := sdsserver.CallerToken(ctx)
	if errors.Is(err, token.ErrNoToken) {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "sds: no credentials: "+sdsserver.TokenHint)
	}
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error()+": "+sdsserver.TokenHint)
	}
	now := time.Now()
	cached, hit := a.tokens.Get(tok, now)
	if hit && a.cache.Current(cached.ID) != nil {
		// Still held (not dropped as idle, not expired): no need to ask.
		a.nodeFed.wait(ctx, cached.ID)
		return cached.ID, nil
	}
	svid, err := a.fetcher.FetchWithToken(ctx, tok)
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.Unauthenticated {
			return spiffeid.ID{}, status.Error(codes.Unauthenticated, "sds: the CA refused the token: "+st.Message())
		}
		if hit {
			// The CA cannot be asked: the identity it named stands (a
			// stream for ROOTCA alone is still served).
			return cached.ID, nil
		}
		return spiffeid.ID{}, status.Errorf(codes.Unavailable, "sds: CA: %v", err)
	}
	a.cache.Put(svid)
	if exp, ok := tokenCacheExpiry(tok, now); ok {
		a.tokens.Put(tok, &caserver.Caller{ID: svid.ID, Method: "ca"}, exp, now)
	}
	// The stream may name its namespace's foreign bundles at once.
	a.nodeFed.wait(ctx, svid.ID)
	return svid.ID, nil
}

// maxTokenCache bounds how long the node agent trusts a token the CA
// accepted without asking again.
const maxTokenCache = 5 * time.Minute

// tokenCacheExpiry is when the node agent stops trusting tok (which the
// CA accepted at now) without asking the CA again: maxTokenCache, but no
// later than the token's own expiry. A token whose claims cannot be read
// is not cached.
func tokenCacheExpiry(tok string, now time.Time) (time.Time, bool) {
	_, c, err := token.Parse(tok)
	if err != nil {
		return time.Time{}, false
	}
	exp := now.Add(maxTokenCache)
	if c.Expiry != nil && c.Expiry.Time().Before(exp) {
		exp = c.Expiry.Time()
	}
	return exp, true
}

func (a *agent) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	serve := func(path string, register func(grpc.ServiceRegistrar)) error {
		lis, err := unixsock.Listen(path, os.FileMode(a.f.socketMode))
		if err != nil {
			return err
		}
		s := grpc.NewServer(caserver.NewLimiter(caserver.DefaultLimits()).ServerOptions()...)
		register(s)
		g.Go(func() error { return s.Serve(lis) })
		g.Go(func() error {
			<-ctx.Done()
			s.GracefulStop() // closes lis, which removes its socket
			return nil
		})
		a.log.Info("serving", "socket", path)
		return nil
	}
	if err := serve(a.f.sdsSocket, a.sds.Register); err != nil {
		return fmt.Errorf("SDS socket: %w", err)
	}
	if a.wapi != nil {
		if err := serve(a.f.wapiSocket, a.wapi.Register); err != nil {
			return fmt.Errorf("workload API socket: %w", err)
		}
	}
	if !a.f.nodeAgent {
		g.Go(func() error { a.followBundle(ctx, a.workloadBundles()); return nil })
	}
	if a.f.metricsListen != "" {
		lis, err := net.Listen("tcp", a.f.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		reg := metrics.NewAgent(metrics.AgentStats{Cache: a.cache.Stats, Streams: a.sds.Streams, Roots: func() int { return len(a.roots()) }})
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", reg.Handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error { <-ctx.Done(); return hs.Close() })
		a.log.Info("serving metrics", "address", lis.Addr().String())
	}
	err := g.Wait()
	if a.nodeFed != nil {
		a.nodeFed.close() // no bundle stream after we return
	}
	a.cache.Wait() // no rotation or file write after we return
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}
