package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/wardenmesh/warden/xds"

	"github.com/wardenmesh/warden/api"
)

// The configuration feed: changes debounced, then applied to every proxy.

type objState struct {
	obj  api.Object
	hash string
}

type update struct {
	objs     []api.Object
	services []*xds.Service
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
	mesh, err := xds.NewMesh(objs, services, s.options())
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
	s.objs, s.mesh, s.applied = next, mesh, objs
	s.outbound = map[string]*outbound{}
	s.generation++
	proxies := make([]*proxyState, 0, len(s.proxies))
	var revoked []revocation
	for _, ps := range s.proxies {
		w := mesh.Workload(ps.proxy)
		// The workload a proxy stands for may have changed under its
		// streams (an address now registered to another service
		// account): they are closed before anything of it is built.
		if err := s.mayServe(ps.id, ps.proxy, w); err != nil {
			revoked = append(revoked, s.revokeLocked(ps, err))
			continue
		}
		// A gateway's listeners come from Gateways and VirtualServices:
		// rebuilt on every change.
		if jwks || !reflect.DeepEqual(w, ps.workload) || ps.proxy.Type == xds.RouterProxy || xds.Affects(changed, w, s.cfg.Options.RootNamespace) {
			ps.workload, ps.inbound = w, nil
		}
		proxies = append(proxies, ps)
	}
	s.mu.Unlock()
	// After the swap, so that a compile of the previous configuration
	// still finds the keys of an issuer this one drops.
	if is, ok := s.cfg.Options.JWTKeys.(IssuerSetter); ok {
		is.SetIssuers(mesh.JWTDiscoveryIssuers())
	}
	for _, r := range revoked {
		s.endRevoked(r)
	}
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
	s.rebuildAll("JWT keys changed", false)
}

// rebuildAll drops every proxy's inbound configuration (and with
// dropOutbound, the shared outbound ones) and pushes each proxy anew; the
// caller holds applyMu.
func (s *Server) rebuildAll(why string, dropOutbound bool) {
	s.mu.Lock()
	if dropOutbound {
		s.outbound = map[string]*outbound{}
	}
	proxies := make([]*proxyState, 0, len(s.proxies))
	for _, ps := range s.proxies {
		ps.inbound = nil
		proxies = append(proxies, ps)
	}
	s.mu.Unlock()
	for _, ps := range proxies {
		if err := s.push(context.Background(), ps); err != nil {
			s.cfg.Log.Error("xds: push after "+why, "proxy", ps.proxy.ID, "error", err.Error())
		}
	}
}

// TrustBundlesChanged rebuilds every proxy's configuration, outbound
// and inbound: a federating Envoy workload's validation contexts carry
// the trust bundles inline (xds.Options.TrustBundles), so a foreign
// bundle's change, or the local root's, changes its listeners and
// clusters. Nothing is rebuilt without TrustBundles.
func (s *Server) TrustBundlesChanged() {
	if s.cfg.Options.TrustBundles == nil {
		return
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	mesh, objs := s.mesh, s.applied
	s.mu.Unlock()
	if mesh == nil {
		return
	}
	opts := s.options()
	if _, named := opts.TrustBundles.(xds.FederationNames); named && len(opts.FederatedTrustDomains) == 0 && len(mesh.FederatedTrustDomains()) == 0 {
		// No relationship now nor at the last build (Kubernetes mode
		// wires federation before any object exists): no proxy's
		// configuration carries a bundle, nothing to rebuild.
		return
	}
	// A relationship added or removed changes which trust domains
	// authorization takes as federated: the mesh is indexed again.
	if !slices.Equal(opts.FederatedTrustDomains, mesh.FederatedTrustDomains()) {
		next, err := xds.NewMesh(objs, mesh.Services(), opts)
		if err != nil {
			s.cfg.Log.Error("xds: the federated trust domains changed, but the configuration does not build with them; proxies keep the previous one", "trustDomains", strings.Join(opts.FederatedTrustDomains, ","), "error", err.Error())
		} else {
			s.mu.Lock()
			s.mesh = next
			s.generation++
			s.mu.Unlock()
		}
	}
	s.rebuildAll("a trust bundle changed", true)
}

// options are the configured options with the federated trust domains
// of the moment.
func (s *Server) options() xds.Options { return currentOptions(s.cfg.Options) }

// currentOptions is o with the federated trust domains of the moment
// (xds.FederationNames).
func currentOptions(o xds.Options) xds.Options {
	if n, ok := o.TrustBundles.(xds.FederationNames); ok {
		o.FederatedTrustDomains = n.FederatedTrustDomains()
	}
	return o
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
