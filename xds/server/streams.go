package server

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/wardenmesh/warden/xds"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stream admission: authentication, binding a stream to its node, and
// the authorization that is checked again on every build.

// streamState is one ADS stream: the identity that opened it, the node it
// serves once bound (and that node's state), and its handle.
type streamState struct {
	id   spiffeid.ID
	h    *handle
	node string
	ps   *proxyState          // set with node
	sotw map[string]*sotwType // SotW: type URL -> what sotwCache needs
	// Secrets: the delta nonce last sent with its version, and the
	// fingerprints of the ROOTCA roots last ACKed.
	secretNonce, secretVersion string
	acked                      []string
	// inline is, by inlineTypes, the local roots sent and ACKed inline in
	// the SPIFFE validator; nil until a validator is sent (a proxy that
	// does not federate).
	inline *[len(inlineTypes)]inlineState
}

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
	s.streams[streamID] = &streamState{id: id, h: handleOf(ctx), sotw: map[string]*sotwType{}}
	s.mu.Unlock()
	return nil
}

func (s *Server) closed(streamID int64) {
	s.mu.Lock()
	st, ok := s.streams[streamID]
	delete(s.streams, streamID)
	var drop *proxyState
	if ok && st.ps != nil {
		ps := st.ps
		delete(ps.streams, streamID)
		if len(ps.streams) == 0 && s.proxies[ps.proxy.ID] == ps {
			delete(s.proxies, ps.proxy.ID)
			s.cache.ClearSnapshot(ps.proxy.ID)
			drop = ps
		}
	}
	s.mu.Unlock()
	if drop != nil && s.cfg.Observer != nil {
		s.cfg.Observer.ProxiesChanged(drop.proxy.IstioVersion, -1)
	}
}

// bind ties a stream to the node its first request names, after checking
// the stream's identity may act as that node (xds.MayServe).
func (s *Server) bind(ctx context.Context, streamID int64, node *corev3.Node) (*proxyState, error) {
	s.mu.Lock()
	st := s.streams[streamID]
	if st == nil {
		s.mu.Unlock()
		return nil, status.Error(codes.Unauthenticated, "xds: stream not authenticated")
	}
	if st.ps != nil {
		ps, revoked := st.ps, st.ps.revoked
		s.mu.Unlock()
		if node != nil && node.GetId() != "" && node.GetId() != st.node {
			return nil, status.Errorf(codes.PermissionDenied, "xds: this stream serves node %s and cannot switch to %s", st.node, node.GetId())
		}
		if revoked != nil {
			return nil, revoked
		}
		return ps, nil
	}
	mesh, gen := s.mesh, s.generation
	s.mu.Unlock()
	p, err := xds.ParseNode(node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if p.Type == xds.ZtunnelProxy {
		return nil, status.Errorf(codes.InvalidArgument, "xds: node %s is a ztunnel: ztunnel is served on DeltaAggregatedResources only", p.ID)
	}
	w := mesh.Workload(p)
	if err := s.mayServe(st.id, p, w); err != nil {
		s.cfg.Log.Warn("xds: refused", "node", p.ID, "identity", st.id.String(), "error", err.Error())
		return nil, err
	}
	s.mu.Lock()
	if s.generation != gen {
		// A configuration applied while this stream was checked: Apply
		// did not see this proxy, so it is checked against the new one.
		mesh = s.mesh
		w = mesh.Workload(p)
		if err := s.mayServe(st.id, p, w); err != nil {
			s.mu.Unlock()
			s.cfg.Log.Warn("xds: refused", "node", p.ID, "identity", st.id.String(), "error", err.Error())
			return nil, err
		}
	}
	ps := s.proxies[p.ID]
	fresh := ps == nil
	if fresh {
		ps = &proxyState{proxy: p, workload: w, id: st.id, servers: map[string]bool{}, streams: map[int64]*streamState{}}
		s.proxies[p.ID] = ps
	} else if ps.id != st.id {
		s.mu.Unlock()
		return nil, status.Errorf(codes.PermissionDenied, "xds: node %s is connected as %s; %s cannot join it", p.ID, ps.id, st.id)
	}
	ps.streams[streamID] = st
	st.node, st.ps = p.ID, ps
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
		s.mu.Lock()
		revoked := ps.revoked
		s.mu.Unlock()
		if revoked != nil {
			return nil, revoked
		}
	}
	return ps, nil
}

// mayServe is xds.MayServe as a gRPC status.
func (s *Server) mayServe(id spiffeid.ID, p *xds.Proxy, w *xds.Workload) error {
	if err := xds.MayServe(id, p, w, s.cfg.Options.TrustDomain); err != nil {
		return status.Error(codes.PermissionDenied, "xds: "+strings.TrimPrefix(err.Error(), xds.ErrNotAuthorized.Error()+": "))
	}
	return nil
}

// errRevoked: the proxy's streams were closed (proxyState.revoked).
var errRevoked = errors.New("xds: the proxy's streams were closed")

// revocation is a proxy taken out of the server whose streams are still
// to be ended (endRevoked, outside the lock).
type revocation struct {
	ps      *proxyState
	streams []*streamState
	left    bool // it was the node's connected proxy
}

// revokeLocked takes ps out of the server (s.mu held) because its
// identity may no longer have its configuration (reason, a gRPC
// status): from now on nothing is built for it or handed to the caches,
// so no resource of the workload its address now stands for reaches its
// streams. endRevoked then closes them.
func (s *Server) revokeLocked(ps *proxyState, reason error) revocation {
	if ps.revoked != nil {
		return revocation{ps: ps}
	}
	ps.revoked = reason
	r := revocation{ps: ps, left: s.proxies[ps.proxy.ID] == ps}
	if r.left {
		delete(s.proxies, ps.proxy.ID)
		s.cache.ClearSnapshot(ps.proxy.ID)
	}
	for _, st := range ps.streams {
		r.streams = append(r.streams, st)
	}
	return r
}

// endRevoked ends the streams of a revocation with its reason, logs it
// and counts it.
func (s *Server) endRevoked(r revocation) {
	if len(r.streams) == 0 && !r.left {
		return
	}
	ps := r.ps
	s.cfg.Log.Warn("xds: closing the streams of a proxy whose workload no longer runs as their identity", "node", ps.proxy.ID,
		"identity", ps.id.String(), "streams", len(r.streams), "reason", status.Convert(ps.revoked).Message())
	for _, st := range r.streams {
		st.h.end(ps.revoked)
	}
	if o := s.cfg.Observer; o != nil {
		for range r.streams {
			o.StreamRevoked()
		}
		if r.left {
			o.ProxiesChanged(ps.proxy.IstioVersion, -1)
		}
	}
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
	ps := st.ps
	if ps == nil || ps.built == nil || len(req.ResourceNames) == 0 {
		return
	}
	i := slices.Index(typeOrder, t)
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
