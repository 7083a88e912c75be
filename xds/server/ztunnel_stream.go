package server

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/xds"
)

// ztStream is one ztunnel's delta stream: its identity and node, and
// per type what it subscribed to and the generation it has.
type ztStream struct {
	id    spiffeid.ID
	proxy *xds.Proxy
	h     *handle
	send  func(*discovery.DeltaDiscoveryResponse) error
	types [2]ztType
	nonce uint64
	// notify wakes the stream after a change; pushStart is when the
	// change began (metrics).
	notify chan time.Time
}

// ztType is what a stream subscribed to of one type.
type ztType struct {
	subscribed bool
	wildcard   bool
	names      map[string]struct{} // by name, besides (or without) wildcard
	gen        uint64              // the state generation it was brought up to
}

// wake tells the stream the state changed (never blocks).
func (st *ztStream) wake(start time.Time) {
	select {
	case st.notify <- start:
	default:
	}
}

// revoke ends the stream: its identity may no longer be served.
func (st *ztStream) revoke(err error) { st.h.end(err) }

// isZtunnel says whether a node ID is a ztunnel's.
func isZtunnel(id string) bool { return len(id) > 8 && id[:8] == string(xds.ZtunnelProxy)+"~" }

// serveZtunnel serves one ztunnel's DeltaAggregatedResources stream,
// whose first request is first.
func (s *Server) serveZtunnel(ctx context.Context, h *handle, stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, first *discovery.DeltaDiscoveryRequest) error {
	id, err := s.cfg.Identify(ctx)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Error(codes.Unauthenticated, "xds: "+err.Error())
	}
	p, err := xds.ParseNode(first.GetNode())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if want, got := s.cfg.ClusterID, first.GetNode().GetMetadata().GetFields()["CLUSTER_ID"].GetStringValue(); want != "" && got != "" && got != want {
		return status.Errorf(codes.PermissionDenied, "xds: node %s is in cluster %s (metadata CLUSTER_ID), but this control plane serves cluster %s", p.ID, got, want)
	}
	s.zt.mu.RLock()
	pods := s.zt.pods
	s.zt.mu.RUnlock()
	if err := s.mayServeZtunnel(id, p, pods); err != nil {
		s.cfg.Log.Warn("xds: ztunnel refused", "node", p.ID, "identity", id.String(), "error", status.Convert(err).Message())
		return err
	}
	st := &ztStream{id: id, proxy: p, h: h, notify: make(chan time.Time, 1),
		send: func(r *discovery.DeltaDiscoveryResponse) error { return h.send(func() error { return stream.Send(r) }) }}
	s.ztMu.Lock()
	s.ztStreams[st] = struct{}{}
	s.ztMu.Unlock()
	// Checked again now that the stream is registered: a change applied
	// in between did not see it.
	s.zt.mu.RLock()
	pods = s.zt.pods
	s.zt.mu.RUnlock()
	defer func() {
		s.ztMu.Lock()
		delete(s.ztStreams, st)
		s.ztMu.Unlock()
		if o := s.cfg.Observer; o != nil {
			o.ProxiesChanged(p.IstioVersion, -1)
		}
	}()
	if o := s.cfg.Observer; o != nil {
		o.ProxiesChanged(p.IstioVersion, 1)
	}
	if err := s.mayServeZtunnel(id, p, pods); err != nil {
		return err
	}
	reqs := make(chan *discovery.DeltaDiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := s.ztRequest(st, first); err != nil {
		return err
	}
	for {
		select {
		case r := <-reqs:
			if err := s.ztRequest(st, r); err != nil {
				return err
			}
		case start := <-st.notify:
			if err := s.ztPush(st, start); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

func (st *ztStream) nextNonce() string {
	st.nonce++
	return strconv.FormatUint(st.nonce, 10)
}

func typeIndex(typeURL string) int {
	for i, t := range ztTypes {
		if t == typeURL {
			return i
		}
	}
	return -1
}

// ztRequest handles one request: an ACK or NACK of a response, or a
// change of subscription, answered at once with what it adds.
func (s *Server) ztRequest(st *ztStream, r *discovery.DeltaDiscoveryRequest) error {
	i := typeIndex(r.TypeUrl)
	if i < 0 {
		s.reportOnce("ztunnel node " + st.proxy.ID + " asked for type " + r.TypeUrl + ", which is not served to ztunnel (only " + ztTypes[0] + " and " + ztTypes[1] + ")")
		return nil
	}
	if r.ErrorDetail != nil {
		s.cfg.Log.Warn("xds: ztunnel rejected configuration (NACK)", "node", st.proxy.ID, "type", r.TypeUrl, "error", r.ErrorDetail.GetMessage())
		if o := s.cfg.Observer; o != nil {
			o.Rejected(r.TypeUrl)
		}
		return nil
	}
	t := &st.types[i]
	first := !t.subscribed
	if r.ResponseNonce != "" && !first && len(r.ResourceNamesSubscribe) == 0 && len(r.ResourceNamesUnsubscribe) == 0 {
		if s.cfg.OnACK != nil {
			s.cfg.OnACK(st.proxy.ID, r.TypeUrl, r.ResponseNonce)
		}
		return nil // an ACK
	}
	wildcardBefore := t.wildcard
	if first {
		t.subscribed = true
		// xDS: a first request naming nothing subscribes to everything.
		t.wildcard = len(r.ResourceNamesSubscribe) == 0
	}
	var added []string
	for _, n := range r.ResourceNamesSubscribe {
		if n == "*" {
			t.wildcard = true
			continue
		}
		if t.names == nil {
			t.names = map[string]struct{}{}
		}
		added = append(added, n)
	}
	for _, n := range r.ResourceNamesUnsubscribe {
		if n == "*" {
			t.wildcard = false
			continue
		}
		delete(t.names, n)
	}
	z := s.zt
	z.mu.RLock()
	defer z.mu.RUnlock()
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: r.TypeUrl, SystemVersionInfo: strconv.FormatUint(z.gen, 10)}
	have := r.InitialResourceVersions
	sent := map[string]bool{}
	if t.wildcard && (first || !wildcardBefore) {
		// Everything, but what the client says it holds at its version;
		// what it holds that is gone is removed.
		for n, res := range z.res[i] {
			if have[n] != res.Version {
				resp.Resources = append(resp.Resources, res)
			}
			sent[n] = true
		}
		for n := range have {
			if _, ok := z.res[i][n]; !ok {
				resp.RemovedResources = append(resp.RemovedResources, n)
			}
		}
	} else if first {
		for n := range have {
			if _, ok := z.res[i][n]; !ok {
				resp.RemovedResources = append(resp.RemovedResources, n)
			}
		}
	}
	// On demand: a name, or for Address a "<network>/<ip>" that
	// resolves to the workloads and services at that address (sent with
	// the key as an alias, and subscribed by their names from now on).
	for _, n := range added {
		res, ok := z.res[i][n]
		if ok {
			t.names[n] = struct{}{}
			if !sent[n] && have[n] != res.Version {
				resp.Resources = append(resp.Resources, res)
				sent[n] = true
			}
			continue
		}
		if i == 0 {
			if names := z.byIP[n]; len(names) > 0 {
				for _, name := range names {
					t.names[name] = struct{}{}
					if res := z.res[i][name]; res != nil && !sent[name] {
						resp.Resources = append(resp.Resources, &discovery.Resource{Name: res.Name, Version: res.Version, Resource: res.Resource, Aliases: []string{n}})
						sent[name] = true
					}
				}
				continue
			}
		}
		// Unknown now: kept, so that it is sent once it exists, and
		// answered as removed, as the protocol has it.
		t.names[n] = struct{}{}
		resp.RemovedResources = append(resp.RemovedResources, n)
	}
	t.gen = z.gen
	resp.Nonce = st.nextNonce()
	return st.send(resp)
}

// ztPush sends what changed since the stream's generation of each type
// it subscribed to.
func (s *Server) ztPush(st *ztStream, start time.Time) error {
	z := s.zt
	z.mu.RLock()
	var resps []*discovery.DeltaDiscoveryResponse
	for i := range ztTypes {
		t := &st.types[i]
		if !t.subscribed || t.gen == z.gen {
			continue
		}
		names, ok := z.changesSince(i, t.gen)
		if !ok {
			z.mu.RUnlock()
			return status.Error(codes.Unavailable, "xds: this ztunnel fell too far behind the mesh's changes; reconnect to receive the difference from what it holds")
		}
		resp := &discovery.DeltaDiscoveryResponse{TypeUrl: ztTypes[i], SystemVersionInfo: strconv.FormatUint(z.gen, 10)}
		for _, n := range names {
			if _, named := t.names[n]; !t.wildcard && !named {
				continue
			}
			if res, ok := z.res[i][n]; ok {
				resp.Resources = append(resp.Resources, res)
			} else {
				resp.RemovedResources = append(resp.RemovedResources, n)
			}
		}
		t.gen = z.gen
		if len(resp.Resources)+len(resp.RemovedResources) > 0 {
			resps = append(resps, resp)
		}
	}
	z.mu.RUnlock()
	for _, r := range resps {
		r.Nonce = st.nextNonce()
		if err := st.send(r); err != nil {
			return err
		}
		if o := s.cfg.Observer; o != nil {
			o.Pushed(r.TypeUrl, time.Since(start))
		}
	}
	return nil
}
