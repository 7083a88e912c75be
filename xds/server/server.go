package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
)

// Identify names the identity of a stream from its context (peer
// certificate, token). An error refuses the stream.
type Identify func(ctx context.Context) (spiffeid.ID, error)

// Secrets returns the SDS resources ("default", "ROOTCA") an Envoy proxy
// of identity id receives over ADS.
type Secrets func(ctx context.Context, id spiffeid.ID) ([]types.Resource, error)

// Credentials returns a Gateway credential (SDS name
// kubernetes://<credentialName>[-cacert]) for a gateway proxy of
// namespace ns: only Secrets of the gateway's own namespace are served.
type Credentials func(ns, sdsName string) (*tlsv3.Secret, error)

// IssuerSetter is the optional side of Options.JWTKeys (oidc.Resolver)
// that is told, on every configuration applied, the issuers the
// configuration leaves to OIDC discovery; it forgets the others.
type IssuerSetter interface {
	SetIssuers(issuers []string)
}

// Config wires a Server.
type Config struct {
	Options     xds.Options
	Identify    Identify
	Secrets     Secrets     // nil: no SDS over ADS
	Credentials Credentials // nil: Gateway credentialName is not served
	// SecretAccess decides which gateways may have the credentials of
	// their namespace (xds.MayReceiveCredential); required with
	// Credentials.
	SecretAccess xds.SecretAccess
	Debounce     time.Duration // quiet time before a change is pushed; 0 pushes at once
	MaxDelay     time.Duration // longest a change waits under constant churn (default 1s)
	Log          *slog.Logger
	// OnACK, when set, is told of every ACK (bench and tests).
	OnACK func(node, typeURL, version string)
	// Observer, when set, hears of connections, pushes, convergence and
	// rejections (metrics).
	Observer Observer
	// TrustedNodeAccounts are the service accounts whose streams are
	// served as ztunnel (xds.MayServeZtunnel); none: ztunnel is refused.
	TrustedNodeAccounts xds.NodeAccounts
	// ClusterID is the cluster whose workloads are served to ztunnel
	// (their uids, and the CLUSTER_ID a ztunnel must send if it sends
	// one); default Kubernetes, as istiod's.
	ClusterID string
}

// Server serves per-proxy configuration over ADS.
type Server struct {
	cfg   Config
	cache *sotwCache
	xds   xdsserver.Server

	mu       sync.Mutex
	mesh     *xds.Mesh
	objs     map[string]objState  // key -> object and its content hash
	applied  []api.Object         // the objects of mesh, as Apply had them (mesh rebuilt with new federated trust domains)
	outbound map[string]*outbound // ns|generator -> shared outbound config
	proxies  map[string]*proxyState
	streams  map[int64]*streamState
	reported map[string]bool // compiler reports already logged

	// Rotation evidence (evidence.go): the roots of ROOTCA by secrets
	// version, and the local roots inline by cluster and listener version.
	roots, inline rootsMemo

	// ztunnel: the compiled resources, the open streams, and the lock
	// that serializes SetAmbient.
	zt        *ztState
	ztMu      sync.Mutex
	ztStreams map[*ztStream]struct{}
	ztApply   sync.Mutex

	pendMu     sync.Mutex
	pending    *update
	timer      *time.Timer
	firstPend  time.Time
	applyMu    sync.Mutex
	generation uint64
}

// Observer hears what the server does, for metrics. Calls are made
// outside the server's lock and must not block.
type Observer interface {
	// ProxiesChanged is +1 when a proxy connects, -1 when its last
	// stream closes; version is its ISTIO_VERSION (Proxy.IstioVersion).
	ProxiesChanged(version string, delta int)
	// Pushed: a new version of typeURL was set for a proxy, d after its
	// build began.
	Pushed(typeURL string, d time.Duration)
	// Converged: a proxy ACKed every type pushed to it, d after the
	// first of those pushes began.
	Converged(d time.Duration)
	// Rejected: a proxy NACKed typeURL.
	Rejected(typeURL string)
	// StreamRevoked: a stream was closed because its identity may no
	// longer have the configuration of the workload it stood for.
	StreamRevoked()
}

// NewServer makes a Server with an empty mesh; call Update to load config.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Identify == nil {
		return nil, errors.New("xds: Identify is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Credentials != nil && cfg.SecretAccess == nil {
		return nil, errors.New("xds: Credentials needs SecretAccess: who may read a namespace's credentials")
	}
	if cfg.Debounce < 0 {
		return nil, fmt.Errorf("xds: push debounce %s is negative", cfg.Debounce)
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = time.Second
	}
	cfg.Options = cfg.Options.WithDefaults()
	mesh, err := xds.NewMesh(nil, nil, currentOptions(cfg.Options))
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mesh: mesh, objs: map[string]objState{}, outbound: map[string]*outbound{},
		proxies: map[string]*proxyState{}, streams: map[int64]*streamState{}, zt: newZtState(), ztStreams: map[*ztStream]struct{}{}}
	// Not in "ADS mode": that holds a response until the request names every
	// resource of the type, which proxyless gRPC clients (asking for the
	// listeners they dial) never do.
	s.cache = newSOTWCache(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil))
	s.xds = xdsserver.NewServer(ctx, s.cache, s.callbacks())
	return s, nil
}

// Register adds the Aggregated Discovery xds.Service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(r, ads{Server: s.xds, srv: s})
}

// xds.Mesh is the current mesh view.
func (s *Server) Mesh() *xds.Mesh {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mesh
}
