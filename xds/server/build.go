package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wardenmesh/warden/xds"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Building and versioning a proxy's configuration, and handing it to the caches.

type proxyState struct {
	proxy    *xds.Proxy
	pending  map[string]string // type -> version pushed, not yet ACKed
	since    time.Time         // when the oldest pending push began
	workload *xds.Workload
	id       spiffeid.ID
	streams  map[int64]*streamState // by stream number (delta streams negated)
	// revoked, once set, is why the proxy's streams were closed: the
	// identity they opened with may no longer have its configuration.
	revoked  error
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

// part is generated configuration with, per type (typeOrder), its
// resources encoded once and indexed by name for the snapshot cache, and
// a content hash. A namespace's proxies share its outbound part.
type part struct {
	cfg    *xds.Config
	index  []map[string]types.ResourceWithTTL // per type: name -> *marshaled; read-only
	lists  []*typeList                        // the same, in order, as Anys (SotW answers)
	hashes []string
}

// partsVersion is the version of type typeOrder[i] for a proxy with
// outbound part out and inbound part in: both parts' whole hashes, since
// a proxy is pushed a type only when its version changes, and two
// inbound parts whose hashes agree in a prefix would leave a changed
// inbound policy unpushed.
func partsVersion(out, in *part, i int) string { return out.hashes[i] + in.hashes[i] }

// typeOrder is the xDS types a part carries, in order, each with the
// field of xds.Config that holds its resources: data, so that a proxy
// kind with other resource types adds to a list rather than to
// fixed-size arrays.
var typeOrder = []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}

var typeResources = map[string]func(*xds.Config) []types.Resource{
	resource.ListenerType: func(c *xds.Config) []types.Resource { return c.Listeners },
	resource.RouteType:    func(c *xds.Config) []types.Resource { return c.Routes },
	resource.ClusterType:  func(c *xds.Config) []types.Resource { return c.Clusters },
	resource.EndpointType: func(c *xds.Config) []types.Resource { return c.Endpoints },
}

func newPart(c *xds.Config) (*part, error) {
	n := len(typeOrder)
	p := &part{cfg: c, index: make([]map[string]types.ResourceWithTTL, n), lists: make([]*typeList, n), hashes: make([]string, n)}
	for i, t := range typeOrder {
		l, err := newTypeList(t, typeResources[t](c))
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
func (s *Server) build(ctx context.Context, ps *proxyState) (*built, error) {
	s.mu.Lock()
	if ps.revoked != nil {
		s.mu.Unlock()
		return nil, errRevoked
	}
	mesh := s.mesh
	in := ps.inbound
	w := ps.workload
	// The one decision, on every build: a workload bound with another
	// mesh must still run as the stream's identity.
	if err := s.mayServe(ps.id, ps.proxy, w); err != nil {
		r := s.revokeLocked(ps, err)
		s.mu.Unlock()
		s.endRevoked(r)
		return nil, errRevoked
	}
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
		v := partsVersion(out, in, i)
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
	s.rememberInline(b, out, in)
	b.reports = append(append([]string(nil), out.cfg.Reports...), in.cfg.Reports...)
	if len(in.cfg.Credentials) > 0 {
		secrets = slices.Clone(secrets)
		for _, name := range in.cfg.Credentials {
			if s.cfg.Credentials == nil {
				b.reports = append(b.reports, fmt.Sprintf("gateway credential %s: not served (no credential source configured); its listener waits for it", name))
				continue
			}
			// Asked on every build: a grant withdrawn stops the next push.
			if err := xds.MayReceiveCredential(ctx, s.cfg.SecretAccess, ps.id, ps.proxy, ps.proxy.Namespace, s.cfg.Options.TrustDomain); err != nil {
				b.reports = append(b.reports, fmt.Sprintf("gateway credential %s: not served to node %s: %s; its listener waits for it", name, ps.proxy.ID, strings.TrimPrefix(err.Error(), xds.ErrNotAuthorized.Error()+": ")))
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

// push sets ps's configuration when any type's version changed.
func (s *Server) push(ctx context.Context, ps *proxyState) error {
	start := time.Now()
	b, err := s.build(ctx, ps)
	if errors.Is(err, errRevoked) {
		return nil // its streams are closed; nothing to push
	}
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

// CredentialsChanged rebuilds the configuration of every gateway proxy
// in namespace ns ("" for all): a credential Secret there changed.
func (s *Server) CredentialsChanged(ctx context.Context, ns string) {
	s.mu.Lock()
	var ps []*proxyState
	for _, p := range s.proxies {
		if p.proxy.Type == xds.RouterProxy && (ns == "" || p.proxy.Namespace == ns) {
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

// RootsChanged pushes fresh secrets (ROOTCA holds the new bundle) to every
// Envoy proxy connected over ADS, and, with federation, the listeners and
// clusters that carry the local roots inline (TrustBundlesChanged).
func (s *Server) RootsChanged(ctx context.Context) {
	s.TrustBundlesChanged()
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

// SecretsChanged re-reads the secrets of every proxy running as id (after
// a rotation or a root change) and pushes them.
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
