package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/xds"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/api"
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

// Config wires a Server.
type Config struct {
	Options     xds.Options
	Identify    Identify
	Secrets     Secrets       // nil: no SDS over ADS
	Credentials Credentials   // nil: Gateway credentialName is not served
	Debounce    time.Duration // quiet time before a change is pushed; 0 pushes at once
	MaxDelay    time.Duration // longest a change waits under constant churn (default 1s)
	Log         *slog.Logger
	// OnACK, when set, is told of every ACK (bench and tests).
	OnACK func(node, typeURL, version string)
	// Observer, when set, hears of connections, pushes, convergence and
	// rejections (metrics).
	Observer Observer
}

// Server serves per-proxy configuration over ADS.
type Server struct {
	cfg   Config
	cache *sotwCache
	xds   xdsserver.Server

	mu       sync.Mutex
	mesh     *xds.Mesh
	objs     map[string]objState  // key -> object and its content hash
	outbound map[string]*outbound // ns|generator -> shared outbound config
	proxies  map[string]*proxyState
	streams  map[int64]*streamState
	reported map[string]bool // compiler reports already logged

	rootsMu    sync.Mutex
	rootsOf    map[string][]string // secrets version -> fingerprints of its ROOTCA roots
	rootsOrder []string

	pendMu     sync.Mutex
	pending    *update
	timer      *time.Timer
	firstPend  time.Time
	applyMu    sync.Mutex
	generation uint64
}

type objState struct {
	obj  api.Object
	hash string
}

type update struct {
	objs     []api.Object
	services []*xds.Service
}

// part is generated configuration with, per type (typeOrder), its
// resources encoded once and indexed by name for the snapshot cache, and
// a content hash. A namespace's proxies share its outbound part.
type part struct {
	cfg    *xds.Config
	index  [4]map[string]types.ResourceWithTTL // name -> *marshaled; read-only
	lists  [4]*typeList                        // the same, in order, as Anys (SotW answers)
	hashes [4]string
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
}

type proxyState struct {
	proxy    *xds.Proxy
	pending  map[string]string // type -> version pushed, not yet ACKed
	since    time.Time         // when the oldest pending push began
	workload *xds.Workload
	id       spiffeid.ID
	streams  int
	inbound  *part
	servers  map[string]bool // gRPC server listener names asked for
	secrets  []types.Resource
	versions map[string]string
	reports  []string
	built    *built // the configuration last set
	// started counts builds as they read the mesh; applied is the number
	// of the last one set, so that a slow build never replaces a later one.
	started, applied uint64
	delta            bool // a delta stream is open: the snapshot cache serves it
}

type streamState struct {
	id   spiffeid.ID
	node string
	sotw map[string]*sotwType // SotW: type URL -> what sotwCache needs
	// Secrets: the delta nonce last sent with its version, and the
	// fingerprints of the ROOTCA roots last ACKed.
	secretNonce, secretVersion string
	acked                      []string
}

var typeOrder = [4]string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}

// sotwType is a SotW stream's state for one type.
type sotwType struct {
	sent  string // version last answered ("" before the first answer)
	nonce string // nonce last answered, until a request of the type is taken
	// asked prints (namesPrint) the names last asked for, answered those
	// the last answer was for.
	asked, answered uint64
}

// sotwOf is st's state for typeURL, made on first use (s.mu held).
func (st *streamState) sotwOf(typeURL string) *sotwType {
	t := st.sotw[typeURL]
	if t == nil {
		t = &sotwType{}
		st.sotw[typeURL] = t
	}
	return t
}

// NewServer makes a Server with an empty mesh; call Update to load config.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Identify == nil {
		return nil, errors.New("xds: Identify is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Debounce < 0 {
		return nil, fmt.Errorf("xds: push debounce %s is negative", cfg.Debounce)
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = time.Second
	}
	cfg.Options = cfg.Options.WithDefaults()
	mesh, err := xds.NewMesh(nil, nil, cfg.Options)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, mesh: mesh, objs: map[string]objState{}, outbound: map[string]*outbound{},
		proxies: map[string]*proxyState{}, streams: map[int64]*streamState{}}
	// Not in "ADS mode": that holds a response until the request names every
	// resource of the type, which proxyless gRPC clients (asking for the
	// listeners they dial) never do.
	s.cache = newSOTWCache(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil))
	s.xds = xdsserver.NewServer(ctx, s.cache, s.callbacks())
	return s, nil
}

// Register adds the Aggregated Discovery xds.Service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(r, s.xds)
}

// xds.Mesh is the current mesh view.
func (s *Server) Mesh() *xds.Mesh {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mesh
}

// Update replaces the configuration; the change is pushed after the
// debounce window.
func (s *Server) Update(objs []api.Object, services []*xds.Service) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	s.pending = &update{objs: objs, services: services}
	now := time.Now()
	if s.timer == nil {
		s.firstPend = now
		s.timer = time.AfterFunc(s.cfg.Debounce, s.fire)
		return
	}
	wait := s.cfg.Debounce
	if left := s.cfg.MaxDelay - now.Sub(s.firstPend); left < wait {
		wait = max(left, 0)
	}
	s.timer.Reset(wait)
}

func (s *Server) fire() {
	s.pendMu.Lock()
	u := s.pending
	s.pending, s.timer = nil, nil
	s.pendMu.Unlock()
	if u != nil {
		if err := s.Apply(u.objs, u.services); err != nil {
			s.cfg.Log.Error("xds: configuration not applied; proxies keep the previous one", "error", err.Error())
		}
	}
}

// Apply replaces the configuration now (Update debounces, then calls
// it): affected proxies get new snapshots.
func (s *Server) Apply(objs []api.Object, services []*xds.Service) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	mesh, err := xds.NewMesh(objs, services, s.cfg.Options)
	if err != nil {
		return err
	}
	next := map[string]objState{}
	for _, o := range objs {
		next[kindKey(o)] = objState{obj: o, hash: objHash(o)}
	}
	s.mu.Lock()
	var changed []api.Object
	for k, n := range next {
		if o, ok := s.objs[k]; !ok || o.hash != n.hash {
			changed = append(changed, n.obj)
			if ok {
				changed = append(changed, o.obj)
			}
		}
	}
	for k, o := range s.objs {
		if _, ok := next[k]; !ok {
			changed = append(changed, o.obj)
		}
	}
	// A jwksUri's cluster follows the registry: when one moves, every
	// jwt_authn is compiled again (rare: a service of a jwksUri host
	// appearing, going, or changing its ports).
	jwks := s.mesh != nil && s.mesh.JwksClustersChanged(mesh)
	s.objs, s.mesh = next, mesh
	s.outbound = map[string]*outbound{}
	s.generation++
	proxies := make([]*proxyState, 0, len(s.proxies))
	for _, ps := range s.proxies {
		w := mesh.Workload(ps.proxy)
		// A gateway's listeners come from Gateways and VirtualServices:
		// rebuilt on every change.
		if jwks || !reflect.DeepEqual(w, ps.workload) || ps.proxy.Type == "router" || xds.Affects(changed, w, s.cfg.Options.RootNamespace) {
			ps.workload, ps.inbound = w, nil
		}
		proxies = append(proxies, ps)
	}
	s.mu.Unlock()
	var errs []error
	for _, ps := range proxies {
		if err := s.push(context.Background(), ps); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// JWTKeysChanged recompiles every proxy's inbound configuration: the keys
// OIDC discovery found (xds.Options.JWTKeys) are inlined in jwt_authn.
func (s *Server) JWTKeysChanged() {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	proxies := make([]*proxyState, 0, len(s.proxies))
	for _, ps := range s.proxies {
		ps.inbound = nil
		proxies = append(proxies, ps)
	}
	s.mu.Unlock()
	for _, ps := range proxies {
		if err := s.push(context.Background(), ps); err != nil {
			s.cfg.Log.Error("xds: push after JWT keys changed", "proxy", ps.proxy.ID, "error", err.Error())
		}
	}
}

func kindKey(o api.Object) string {
	return fmt.Sprintf("%T/%s/%s", o, o.Meta().Namespace, o.Meta().Name)
}

// objHash fingerprints an object's content. It hashes the JSON encoding:
// printing the Go value would print nested pointers' addresses, so every
// reload of an unchanged file would look like an edit (and an edit in
// place behind a pointer like none).
func objHash(o api.Object) string {
	b, err := json.Marshal(o)
	if err != nil { // not expected of the api types; never equal to a previous hash
		b = fmt.Appendf(nil, "%T %p %v", o, o, err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

func newPart(c *xds.Config) (*part, error) {
	p := &part{cfg: c}
	for i, set := range [][]types.Resource{c.Listeners, c.Routes, c.Clusters, c.Endpoints} {
		l, err := newTypeList(typeOrder[i], set)
		if err != nil {
			return nil, fmt.Errorf("xds: encode %w", err)
		}
		p.lists[i] = l
		p.index[i] = make(map[string]types.ResourceWithTTL, l.len())
		for _, m := range l.items {
			p.index[i][m.name] = types.ResourceWithTTL{Resource: m}
		}
		p.hashes[i] = l.hash()
	}
	return p, nil
}

// resources is the snapshot's resources of type typeOrder[i] for a proxy
// with outbound part out and inbound part in, at version v: a part's own
// index when the other adds nothing (the common case, shared by every
// proxy of a namespace), else a merge in which in wins, as it did when
// the snapshot was built from the list out then in.
func resources(v string, out, in *part, i int) cachev3.Resources {
	switch {
	case len(in.index[i]) == 0:
		return cachev3.Resources{Version: v, Items: out.index[i]}
	case len(out.index[i]) == 0:
		return cachev3.Resources{Version: v, Items: in.index[i]}
	}
	items := make(map[string]types.ResourceWithTTL, len(out.index[i])+len(in.index[i]))
	maps.Copy(items, out.index[i])
	maps.Copy(items, in.index[i])
	return cachev3.Resources{Version: v, Items: items}
}

// outbound is a namespace's outbound part, built once.
type outbound struct {
	once sync.Once
	part *part
	err  error
}

// outboundFor returns the shared outbound configuration for a scope
// (namespace, generator, Sidecar), building it once per configuration generation: proxies
// that connect together, or are pushed together, wait for one build.
func (s *Server) outboundFor(mesh *xds.Mesh, sc xds.Scope) (*part, error) {
	key := sc.Key()
	o := &outbound{}
	s.mu.Lock()
	if mesh == s.mesh { // else mesh is stale; build it aside
		if q, ok := s.outbound[key]; ok {
			o = q
		} else {
			s.outbound[key] = o
		}
	}
	s.mu.Unlock()
	o.once.Do(func() {
		c, err := mesh.Outbound(sc)
		if err == nil {
			o.part, err = newPart(c)
		}
		o.err = err
	})
	return o.part, o.err
}

// built is the configuration a proxy gets: its outbound part (shared
// with its scope), its inbound part and its secrets, with each type's
// version.
type built struct {
	seq      uint64 // proxyState.started when the build read the mesh
	out, in  *part
	secrets  []types.Resource // with the gateway credentials
	versions map[string]string
	reports  []string
	sets     map[string]*typeSet // for SotW streams (sotwCache)
}

// snapshot is b for go-control-plane's snapshot cache (delta streams).
func (b *built) snapshot() *cachev3.Snapshot {
	snap := &cachev3.Snapshot{}
	for i, t := range typeOrder {
		snap.Resources[cachev3.GetResponseType(t)] = resources(b.versions[t], b.out, b.in, i)
	}
	if v, ok := b.versions[resource.SecretType]; ok {
		snap.Resources[cachev3.GetResponseType(resource.SecretType)] = cachev3.NewResources(v, b.secrets)
	}
	return snap
}

// build makes the configuration ps gets now.
func (s *Server) build(ps *proxyState) (*built, error) {
	s.mu.Lock()
	mesh := s.mesh
	in := ps.inbound
	w := ps.workload
	servers := make([]string, 0, len(ps.servers))
	for n := range ps.servers {
		servers = append(servers, n)
	}
	secrets := ps.secrets
	ps.started++
	seq := ps.started
	s.mu.Unlock()
	out, err := s.outboundFor(mesh, mesh.ScopeOf(ps.proxy, w))
	if err != nil {
		return nil, err
	}
	if in == nil {
		c, err := mesh.InboundFor(ps.proxy, w, servers)
		if err != nil {
			return nil, err
		}
		if in, err = newPart(c); err != nil {
			return nil, err
		}
		s.mu.Lock()
		if ps.workload == w {
			ps.inbound = in
		}
		s.mu.Unlock()
	}
	b := &built{seq: seq, out: out, in: in, versions: map[string]string{}, sets: map[string]*typeSet{}}
	for i, t := range typeOrder {
		v := out.hashes[i] + in.hashes[i][:6]
		b.versions[t] = v
		set := &typeSet{version: v, lists: [2]*typeList{out.lists[i], in.lists[i]}}
		for _, m := range in.lists[i].items {
			if _, ok := out.index[i][m.name]; ok { // in wins, in out's place
				set.lists = [2]*typeList{concat(out.lists[i], in.lists[i])}
				break
			}
		}
		b.sets[t] = set
	}
	b.reports = append(append([]string(nil), out.cfg.Reports...), in.cfg.Reports...)
	if len(in.cfg.Credentials) > 0 {
		secrets = slices.Clone(secrets)
		for _, name := range in.cfg.Credentials {
			if s.cfg.Credentials == nil {
				b.reports = append(b.reports, fmt.Sprintf("gateway credential %s: not served (no credential source configured); its listener waits for it", name))
				continue
			}
			c, err := s.cfg.Credentials(ps.proxy.Namespace, name)
			if err != nil {
				b.reports = append(b.reports, err.Error()+"; its listener waits for it")
				continue
			}
			secrets = append(secrets, c)
		}
	}
	if len(secrets) > 0 {
		l, err := newTypeList(resource.SecretType, secrets)
		if err != nil {
			return nil, err
		}
		v := l.hash()
		b.secrets = secrets
		b.versions[resource.SecretType] = v
		b.sets[resource.SecretType] = &typeSet{version: v, lists: [2]*typeList{l}}
		s.rememberRoots(v, secrets)
	}
	return b, nil
}

// CredentialsChanged rebuilds the configuration of every gateway proxy
// in namespace ns ("" for all): a credential Secret there changed.
func (s *Server) CredentialsChanged(ctx context.Context, ns string) {
	s.mu.Lock()
	var ps []*proxyState
	for _, p := range s.proxies {
		if p.proxy.Type == "router" && (ns == "" || p.proxy.Namespace == ns) {
			ps = append(ps, p)
		}
	}
	s.mu.Unlock()
	for _, p := range ps {
		if err := s.push(ctx, p); err != nil {
			s.cfg.Log.Error("xds: push", "node", p.proxy.ID, "error", err.Error())
		}
	}
}

// push sets ps's configuration when any type's version changed.
func (s *Server) push(ctx context.Context, ps *proxyState) error {
	start := time.Now()
	b, err := s.build(ps)
	if err != nil {
		return fmt.Errorf("xds: %s: %w", ps.proxy.ID, err)
	}
	versions, reports := b.versions, b.reports
	s.mu.Lock()
	if b.seq < ps.applied { // a later build was set while this one ran
		s.mu.Unlock()
		return nil
	}
	same := reflect.DeepEqual(versions, ps.versions)
	var changed []string
	for t, v := range versions {
		if ps.versions[t] != v {
			changed = append(changed, t)
			if ps.pending == nil {
				ps.pending = map[string]string{}
			}
			if len(ps.pending) == 0 {
				ps.since = start
			}
			ps.pending[t] = v
		}
	}
	ps.versions, ps.reports = versions, reports
	var fresh []string
	for _, r := range reports {
		if !s.reported[r] {
			if s.reported == nil {
				s.reported = map[string]bool{}
			}
			s.reported[r] = true
			fresh = append(fresh, r)
		}
	}
	err = s.set(ctx, ps, b, same)
	s.mu.Unlock()
	// Conflicts and what the compilers could not express are logged once
	// each, not on every push.
	for _, r := range fresh {
		s.cfg.Log.Warn("xds: configuration report", "report", r)
	}
	if same || err != nil {
		return err
	}
	if o := s.cfg.Observer; o != nil {
		d := time.Since(start)
		for _, t := range changed {
			o.Pushed(t, d)
		}
	}
	return nil
}

// set hands b to the caches (s.mu held, so builds reach them in order
// and never after the proxy left: closed): SotW streams always, the
// snapshot cache once ps has a delta stream. An unchanged configuration
// (same) is set too, answering nothing: it holds the current
// generation's shared parts, so the previous one's can be freed.
func (s *Server) set(ctx context.Context, ps *proxyState, b *built, same bool) error {
	ps.built, ps.applied = b, b.seq
	if s.proxies[ps.proxy.ID] != ps {
		return nil
	}
	s.cache.Set(ps.proxy.ID, b.sets)
	if same || !ps.delta {
		return nil
	}
	return s.cache.SetSnapshot(ctx, ps.proxy.ID, b.snapshot())
}

// startDelta makes the snapshot cache serve ps from now on (its first
// delta stream asks, before its watch is made).
func (s *Server) startDelta(ctx context.Context, ps *proxyState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps.delta || ps.built == nil {
		ps.delta = true
		return nil
	}
	ps.delta = true
	return s.cache.SetSnapshot(ctx, ps.proxy.ID, ps.built.snapshot())
}

// acked notes an ACK of typeURL (version: the SotW version; "" on a
// delta stream, where any ACK after a push counts) and reports
// convergence when nothing pushed to ps is left unACKed.
func (s *Server) acked(ps *proxyState, typeURL, version string) {
	s.mu.Lock()
	want, ok := ps.pending[typeURL]
	if !ok || (version != "" && version != want) {
		s.mu.Unlock()
		return
	}
	delete(ps.pending, typeURL)
	var d time.Duration
	if len(ps.pending) == 0 {
		d = time.Since(ps.since)
	}
	s.mu.Unlock()
	if o := s.cfg.Observer; o != nil && d > 0 {
		o.Converged(d)
	}
}

// SecretsChanged re-reads the secrets of every proxy running as id (after
// a rotation or a root change) and pushes them.
// RootsChanged pushes fresh secrets (ROOTCA holds the new bundle) to every
// Envoy proxy connected over ADS.
func (s *Server) RootsChanged(ctx context.Context) {
	s.mu.Lock()
	ids := map[spiffeid.ID]bool{}
	for _, p := range s.proxies {
		ids[p.id] = true
	}
	s.mu.Unlock()
	for id := range ids {
		s.SecretsChanged(ctx, id)
	}
}

func (s *Server) SecretsChanged(ctx context.Context, id spiffeid.ID) {
	if s.cfg.Secrets == nil {
		return
	}
	s.mu.Lock()
	var ps []*proxyState
	for _, p := range s.proxies {
		if p.id == id && p.proxy.Generator == xds.GeneratorEnvoy {
			ps = append(ps, p)
		}
	}
	s.mu.Unlock()
	if len(ps) == 0 {
		return
	}
	secrets, err := s.cfg.Secrets(ctx, id)
	if err != nil {
		s.cfg.Log.Error("xds: secrets", "id", id.String(), "error", err.Error())
		return
	}
	for _, p := range ps {
		s.mu.Lock()
		p.secrets = secrets
		s.mu.Unlock()
		if err := s.push(ctx, p); err != nil {
			s.cfg.Log.Error("xds: push", "node", p.proxy.ID, "error", err.Error())
		}
	}
}

// maxRootsVersions bounds the secrets version -> roots memory.
const maxRootsVersions = 4096

// rememberRoots notes which roots the secrets of version v carry.
func (s *Server) rememberRoots(v string, secrets []types.Resource) {
	s.rootsMu.Lock()
	defer s.rootsMu.Unlock()
	if s.rootsOf == nil {
		s.rootsOf = map[string][]string{}
	}
	if _, ok := s.rootsOf[v]; ok {
		return
	}
	var fps []string
	for _, r := range secrets {
		sec, ok := r.(*tlsv3.Secret)
		if !ok || sec.GetName() != "ROOTCA" || sec.GetValidationContext() == nil { // not a gateway's own CA credential
			continue
		}
		roots, _ := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
		for _, c := range roots {
			fps = append(fps, ca.Fingerprint(c))
		}
	}
	s.rootsOf[v] = fps
	s.rootsOrder = append(s.rootsOrder, v)
	if len(s.rootsOrder) > maxRootsVersions {
		delete(s.rootsOf, s.rootsOrder[0])
		s.rootsOrder = s.rootsOrder[1:]
	}
}

// ackSecrets records that a stream accepted the secrets of version v.
func (s *Server) ackSecrets(id int64, v string) {
	s.rootsMu.Lock()
	fps, ok := s.rootsOf[v]
	s.rootsMu.Unlock()
	if !ok {
		return
	}
	s.mu.Lock()
	if st := s.streams[id]; st != nil {
		st.acked = fps
	}
	s.mu.Unlock()
}

// Missing reports how many streams of Envoy proxies that get their
// secrets over ADS are open, and which have not ACKed a ROOTCA holding
// the root with fingerprint fp (ca.Fingerprint): a root rotation
// waits for them. Names are "<node> (ads stream N)".
func (s *Server) Missing(fp string) (total int, missing []string) {
	if s.cfg.Secrets == nil {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, st := range s.streams {
		ps := s.proxies[st.node]
		if ps == nil || ps.proxy.Generator != xds.GeneratorEnvoy {
			continue
		}
		total++
		if !slices.Contains(st.acked, fp) {
			kind := "ads stream"
			if n < 0 {
				kind, n = "delta ads stream", -n
			}
			missing = append(missing, fmt.Sprintf("%s (%s %d)", st.node, kind, n))
		}
	}
	slices.Sort(missing)
	return total, missing
}

// InUse reports whether a connected proxy runs as id (its secrets are
// served from the SDS cache: sds.Config.InUse).
func (s *Server) InUse(id spiffeid.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ps := range s.proxies {
		if ps.id == id {
			return true
		}
	}
	return false
}

// Reports counts the distinct compiler reports (conflicts, what could
// not be expressed) in the configuration of the connected proxies.
func (s *Server) Reports() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, ps := range s.proxies {
		for _, r := range ps.reports {
			seen[r] = true
		}
	}
	return len(seen)
}

// ProxyStatus is one connected proxy's state, for warden check.
type ProxyStatus struct {
	Node string `json:"node"`
	// Pending lists the xDS types pushed and not yet ACKed; Since is when
	// the oldest of those pushes began.
	Pending []string  `json:"pending,omitempty"`
	Since   time.Time `json:"since,omitempty"`
	Reports []string  `json:"reports,omitempty"`
}

// Status lists the connected proxies, by node ID.
func (s *Server) Status() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for id, ps := range s.proxies {
		st := ProxyStatus{Node: id, Reports: slices.Clone(ps.reports)}
		for t := range ps.pending {
			st.Pending = append(st.Pending, t)
		}
		if len(st.Pending) > 0 {
			slices.Sort(st.Pending)
			st.Since = ps.since
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// Proxies lists the connected proxies' node IDs.
func (s *Server) Proxies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.proxies))
	for id := range s.proxies {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// open authenticates a new stream.
func (s *Server) open(ctx context.Context, streamID int64) error {
	id, err := s.cfg.Identify(ctx)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Unauthenticated, "xds: "+err.Error())
	}
	s.mu.Lock()
	s.streams[streamID] = &streamState{id: id, sotw: map[string]*sotwType{}}
	s.mu.Unlock()
	return nil
}

func (s *Server) closed(streamID int64) {
	s.mu.Lock()
	st, ok := s.streams[streamID]
	delete(s.streams, streamID)
	var drop *proxyState
	if ok && st.node != "" {
		if ps := s.proxies[st.node]; ps != nil {
			if ps.streams--; ps.streams <= 0 {
				delete(s.proxies, st.node)
				drop = ps
			}
		}
	}
	if drop != nil {
		s.cache.ClearSnapshot(drop.proxy.ID)
	}
	s.mu.Unlock()
	if drop != nil {
		if s.cfg.Observer != nil {
			s.cfg.Observer.ProxiesChanged(drop.proxy.IstioVersion, -1)
		}
	}
}

// bind ties a stream to the node its first request names, after checking
// the stream's identity may act as that node: the workload at the node's
// IP must run as the stream's identity (or, for a workload the registry
// doesn't know, the identity must be in the node's namespace).
func (s *Server) bind(ctx context.Context, streamID int64, node *corev3.Node) (*proxyState, error) {
	s.mu.Lock()
	st := s.streams[streamID]
	if st == nil {
		s.mu.Unlock()
		return nil, status.Error(codes.Unauthenticated, "xds: stream not authenticated")
	}
	if st.node != "" {
		ps := s.proxies[st.node]
		s.mu.Unlock()
		if node != nil && node.GetId() != "" && node.GetId() != st.node {
			return nil, status.Errorf(codes.PermissionDenied, "xds: this stream serves node %s and cannot switch to %s", st.node, node.GetId())
		}
		if ps == nil {
			return nil, status.Error(codes.Internal, "xds: proxy state lost")
		}
		return ps, nil
	}
	mesh := s.mesh
	s.mu.Unlock()
	p, err := xds.ParseNode(node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	w := mesh.Workload(p)
	if err := authorize(st.id, p, w, s.cfg.Options.TrustDomain); err != nil {
		s.cfg.Log.Warn("xds: refused", "node", p.ID, "identity", st.id.String(), "error", err.Error())
		return nil, err
	}
	s.mu.Lock()
	ps := s.proxies[p.ID]
	fresh := ps == nil
	if fresh {
		ps = &proxyState{proxy: p, workload: w, id: st.id, servers: map[string]bool{}}
		s.proxies[p.ID] = ps
	} else if ps.id != st.id {
		s.mu.Unlock()
		return nil, status.Errorf(codes.PermissionDenied, "xds: node %s is connected as %s; %s cannot join it", p.ID, ps.id, st.id)
	}
	ps.streams++
	st.node = p.ID
	s.mu.Unlock()
	if fresh && s.cfg.Observer != nil {
		s.cfg.Observer.ProxiesChanged(p.IstioVersion, 1)
	}
	if fresh {
		if s.cfg.Secrets != nil && p.Generator == xds.GeneratorEnvoy {
			secrets, err := s.cfg.Secrets(ctx, st.id)
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "xds: no certificate for %s yet: %v", st.id, err)
			}
			s.mu.Lock()
			ps.secrets = secrets
			s.mu.Unlock()
		}
		if err := s.push(ctx, ps); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return ps, nil
}

func authorize(id spiffeid.ID, p *xds.Proxy, w *xds.Workload, td spiffeid.TrustDomain) error {
	if w.Known {
		want, err := w.ID(td)
		if err != nil {
			return status.Errorf(codes.PermissionDenied, "xds: node %s: %v", p.ID, err)
		}
		if id != want {
			return status.Errorf(codes.PermissionDenied, "xds: this stream is authenticated as %s and cannot receive the configuration of node %s, which runs as %s", id, p.ID, want)
		}
		return nil
	}
	segs := strings.Split(id.Path(), "/")
	if id.TrustDomain() != td || len(segs) != 5 || segs[1] != "ns" || segs[2] != p.Namespace {
		return status.Errorf(codes.PermissionDenied, "xds: this stream is authenticated as %s and cannot receive the configuration of node %s in namespace %s", id, p.ID, p.Namespace)
	}
	return nil
}

// request handles what every request needs: binding, gRPC server
// listener names, NACK logging, ACK reporting.
func (s *Server) request(ctx context.Context, streamID int64, node **corev3.Node, typeURL string, names []string, nack *string, ack string, delta bool) error {
	ps, err := s.bind(ctx, streamID, *node)
	if err != nil {
		return err
	}
	if delta {
		if err := s.startDelta(ctx, ps); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
	if *node == nil {
		*node = &corev3.Node{Id: ps.proxy.ID}
	}
	switch {
	case nack != nil:
		s.cfg.Log.Warn("xds: proxy rejected configuration (NACK)", "node", ps.proxy.ID, "type", typeURL, "error", *nack)
		if s.cfg.Observer != nil {
			s.cfg.Observer.Rejected(typeURL)
		}
	case ack != "":
		if s.cfg.OnACK != nil {
			s.cfg.OnACK(ps.proxy.ID, typeURL, ack)
		}
		v := ack
		if delta {
			v = "" // a nonce: any ACK after the push counts
		}
		s.acked(ps, typeURL, v)
	}
	if typeURL == resource.ListenerType && ps.proxy.Generator == xds.GeneratorGRPC {
		var added bool
		s.mu.Lock()
		for _, n := range names {
			if _, _, ok := xds.ParseServerListenerName(n); ok && !ps.servers[n] {
				ps.servers[n] = true
				added = true
			}
		}
		if added {
			ps.inbound = nil
		}
		s.mu.Unlock()
		if added {
			return s.push(ctx, ps)
		}
	}
	return nil
}

// sotwRequest keeps what sotwCache needs of a SotW request, before it
// makes the watch. A request whose names the stream has not been
// answered for (a new stream, or a changed subscription) gets its
// version cleared, so the cache answers it now rather than at the next
// change; a NACK's is set to the version it rejects, which is not sent
// again. Names the proxy's configuration has are replaced by the
// configuration's own strings: a stream keeps its last request's names
// (an Envoy's EDS request names every cluster), and a thousand proxies
// need not hold a thousand copies of them.
func (s *Server) sotwRequest(id int64, req *discovery.DiscoveryRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return
	}
	t := req.TypeUrl
	sw := st.sotwOf(t)
	if sw.nonce != "" && req.ResponseNonce != sw.nonce {
		return // stale: go-control-plane ignores it, and so does this
	}
	// go-control-plane's new watch has no nonce until it is answered: it
	// takes any request of the type until then.
	sw.nonce = ""
	if req.ErrorDetail != nil {
		// A NACK: the rejected version counts as seen, so the cache does
		// not resend it forever; the next change is pushed.
		req.VersionInfo = sw.sent
	}
	sw.asked = namesPrint(req.ResourceNames)
	if sw.sent == "" || sw.answered != sw.asked {
		req.VersionInfo = ""
	}
	ps := s.proxies[st.node]
	if ps == nil || ps.built == nil || len(req.ResourceNames) == 0 {
		return
	}
	i := slices.Index(typeOrder[:], t)
	if i < 0 {
		return
	}
	for j, n := range req.ResourceNames {
		for _, p := range [2]*part{ps.built.out, ps.built.in} {
			if r, ok := p.index[i][n]; ok {
				req.ResourceNames[j] = r.Resource.(*marshaled).name
				break
			}
		}
	}
}

func (s *Server) callbacks() xdsserver.Callbacks {
	return xdsserver.CallbackFuncs{
		StreamOpenFunc:   func(ctx context.Context, id int64, _ string) error { return s.open(ctx, id) },
		StreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(id) },
		// go-control-plane numbers SotW and delta streams apart, each from
		// 1: delta streams are kept under their negated number.
		DeltaStreamOpenFunc:   func(ctx context.Context, id int64, _ string) error { return s.open(ctx, -id) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(-id) },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			var nack *string
			ack := ""
			if req.ErrorDetail == nil && req.ResponseNonce != "" && req.TypeUrl == resource.SecretType {
				s.ackSecrets(id, req.VersionInfo)
			}
			if req.ErrorDetail != nil {
				msg := req.ErrorDetail.GetMessage()
				nack = &msg
			} else if req.ResponseNonce != "" {
				ack = req.VersionInfo
			}
			if err := s.request(context.Background(), id, &req.Node, req.TypeUrl, req.ResourceNames, nack, ack, false); err != nil {
				return err
			}
			s.sotwRequest(id, req)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.mu.Lock()
			if st := s.streams[id]; st != nil {
				sw := st.sotwOf(resp.TypeUrl)
				sw.sent, sw.nonce, sw.answered = resp.VersionInfo, resp.Nonce, sw.asked
			}
			s.mu.Unlock()
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			id = -id
			if resp.TypeUrl != resource.SecretType {
				return
			}
			s.mu.Lock()
			if st := s.streams[id]; st != nil {
				st.secretNonce, st.secretVersion = resp.Nonce, resp.SystemVersionInfo
			}
			s.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			id = -id
			if req.ErrorDetail == nil && req.ResponseNonce != "" && req.TypeUrl == resource.SecretType {
				s.mu.Lock()
				st := s.streams[id]
				v := ""
				if st != nil && st.secretNonce == req.ResponseNonce {
					v = st.secretVersion
				}
				s.mu.Unlock()
				if v != "" {
					s.ackSecrets(id, v)
				}
			}
			var nack *string
			ack := ""
			if req.ErrorDetail != nil {
				msg := req.ErrorDetail.GetMessage()
				nack = &msg
			} else if req.ResponseNonce != "" {
				ack = req.ResponseNonce
			}
			return s.request(context.Background(), id, &req.Node, req.TypeUrl, req.ResourceNamesSubscribe, nack, ack, true)
		},
	}
}
