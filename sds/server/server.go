// Package server serves Envoy's Secret Discovery Service
// (envoy.service.secret.v3.SecretDiscoveryService: StreamSecrets,
// DeltaSecrets, FetchSecrets) from an sds.Cache, on go-control-plane's
// xDS server. Protocol rules: every response carries a version_info and a
// nonce; a request echoing them is an ACK and changes nothing; a request
// with error_detail is a NACK, logged here with its detail, and the
// rejected version is not sent again (see StreamRequestFunc), the next
// change is.
//
// Each stream is tied to one identity, established when it opens (the
// node agent's own workload, or the caller's token). Resource names are
// "default" (the identity's certificate and key), "ROOTCA" (the trust
// bundle), or the identity's own SPIFFE ID; any other name is refused.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/sds"
)

// Identify names the identity a stream may receive, from its context
// (peer, metadata). An error refuses the stream; return a gRPC status to
// choose the code (Unauthenticated by default).
type Identify func(ctx context.Context) (spiffeid.ID, error)

// Config wires a Server.
type Config struct {
	Cache    *sds.Cache
	Identify Identify
	Roots    func() []*x509.Certificate // the trust bundle served as ROOTCA
	Log      *slog.Logger
}

// Server is an SDS server.
type Server struct {
	cfg      Config
	snaps    cachev3.SnapshotCache
	xds      xds.Server
	version  atomic.Uint64
	mu       sync.Mutex
	streams  map[int64]spiffeid.ID
	sent     map[int64]string    // last version sent on each SotW stream
	idents   map[spiffeid.ID]int // open streams per identity
	building sync.Mutex          // serialises snapshot builds
}

// New makes a server. Call Register to add it to a gRPC server, and
// sds.Config.OnUpdate = s.Updated so rotations are pushed.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Cache == nil || cfg.Identify == nil || cfg.Roots == nil {
		return nil, errors.New("sds/server: Cache, Identify and Roots are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, streams: map[int64]spiffeid.ID{}, sent: map[int64]string{}, idents: map[spiffeid.ID]int{}}
	s.snaps = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	s.xds = xds.NewServer(ctx, s.snaps, s.callbacks())
	return s, nil
}

// Register adds the SDS service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	secretsvc.RegisterSecretDiscoveryServiceServer(r, s.xds)
}

// Updated pushes a new SVID to the streams of its identity.
func (s *Server) Updated(svid *sds.SVID) {
	if err := s.publish(context.Background(), svid.ID, svid); err != nil {
		s.cfg.Log.Error("sds: cannot publish", "id", svid.ID.String(), "error", err.Error())
	}
}

// RootsChanged pushes the current bundle to every ROOTCA watcher.
func (s *Server) RootsChanged() {
	s.mu.Lock()
	ids := make([]spiffeid.ID, 0, len(s.idents))
	for id := range s.idents {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	for _, id := range ids {
		if svid := s.cfg.Cache.Current(id); svid != nil {
			s.Updated(svid)
		}
	}
}

// publish builds id's snapshot: default, its SPIFFE ID name, and ROOTCA.
func (s *Server) publish(ctx context.Context, id spiffeid.ID, svid *sds.SVID) error {
	s.building.Lock()
	defer s.building.Unlock()
	def, err := sds.TLSCertificate(sds.DefaultName, svid)
	if err != nil {
		return err
	}
	named, err := sds.TLSCertificate(id.String(), svid)
	if err != nil {
		return err
	}
	root, err := sds.ValidationContext(sds.RootName, s.cfg.Roots())
	if err != nil {
		return err
	}
	snap, err := cachev3.NewSnapshot(strconv.FormatUint(s.version.Add(1), 10), map[resource.Type][]types.Resource{
		resource.SecretType: {def, named, root},
	})
	if err != nil {
		return err
	}
	return s.snaps.SetSnapshot(ctx, id.String(), snap)
}

// identify runs the configured Identify for a stream or a fetch. An error
// that already carries a gRPC status keeps it (an agent whose CA is down
// says Unavailable, not Unauthenticated); any other is Unauthenticated.
func (s *Server) identify(ctx context.Context) (spiffeid.ID, error) {
	id, err := s.cfg.Identify(ctx)
	if err == nil {
		return id, nil
	}
	if _, ok := status.FromError(err); ok {
		return spiffeid.ID{}, err
	}
	return spiffeid.ID{}, status.Error(codes.Unauthenticated, "sds: "+err.Error())
}

// open authenticates a new stream and makes sure its identity's snapshot
// exists.
func (s *Server) open(ctx context.Context, streamID int64) error {
	id, err := s.identify(ctx)
	if err != nil {
		return err
	}
	svid, err := s.cfg.Cache.Get(ctx, id)
	if err != nil {
		return status.Errorf(codes.Unavailable, "sds: no certificate for %s yet: %v", id, err)
	}
	s.mu.Lock()
	s.streams[streamID] = id
	first := s.idents[id] == 0
	s.idents[id]++
	s.mu.Unlock()
	if first {
		return s.publish(ctx, id, svid)
	}
	return nil
}

func (s *Server) closed(streamID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.streams[streamID]
	if !ok {
		return
	}
	delete(s.streams, streamID)
	delete(s.sent, streamID)
	if s.idents[id]--; s.idents[id] == 0 {
		delete(s.idents, id)
		// The key is in the snapshot: keep it no longer than a stream
		// needs it. Under s.mu, so that a stream opening now (which
		// publishes afresh, being first) cannot lose its snapshot.
		s.snaps.ClearSnapshot(id.String())
	}
}

// InUse reports whether a stream serves id (sds.Config.InUse).
func (s *Server) InUse(id spiffeid.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idents[id] > 0
}

// checkNames refuses names other than default, ROOTCA and the stream's own
// SPIFFE ID.
func checkNames(id spiffeid.ID, names []string) error {
	for _, n := range names {
		switch {
		case n == sds.DefaultName, n == sds.RootName, n == id.String():
		case strings.HasPrefix(n, "spiffe://"):
			return status.Errorf(codes.PermissionDenied, "sds: this stream is authenticated as %s and cannot receive %s", id, n)
		default:
			return status.Errorf(codes.InvalidArgument, "sds: unknown resource %q (served: %q, %q, or the caller's SPIFFE ID)", n, sds.DefaultName, sds.RootName)
		}
	}
	return nil
}

// bind points a request at its stream's identity, whatever node it names,
// so a proxy can only ever be served its own secrets.
func (s *Server) bind(streamID int64, node **corev3.Node) (spiffeid.ID, error) {
	s.mu.Lock()
	id, ok := s.streams[streamID]
	s.mu.Unlock()
	if !ok {
		return id, status.Error(codes.Unauthenticated, "sds: stream not authenticated")
	}
	n := &corev3.Node{Id: id.String()}
	if *node != nil {
		n.Cluster, n.Metadata = (*node).Cluster, (*node).Metadata
	}
	*node = n
	return id, nil
}

// nack logs a rejected push.
func (s *Server) nack(id spiffeid.ID, version, detail string) {
	s.cfg.Log.Warn("sds: proxy rejected secrets (NACK)", "id", id.String(), "version", version, "error", detail)
}

func (s *Server) callbacks() xds.Callbacks {
	return xds.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, streamID int64, typeURL string) error {
			if typeURL != resource.SecretType && typeURL != resource.AnyType {
				return status.Errorf(codes.InvalidArgument, "sds: type %s is not served here", typeURL)
			}
			return s.open(ctx, streamID)
		},
		StreamClosedFunc: func(streamID int64, _ *corev3.Node) { s.closed(streamID) },
		DeltaStreamOpenFunc: func(ctx context.Context, streamID int64, _ string) error {
			return s.open(ctx, streamID)
		},
		DeltaStreamClosedFunc: func(streamID int64, _ *corev3.Node) { s.closed(streamID) },
		StreamRequestFunc: func(streamID int64, req *discovery.DiscoveryRequest) error {
			id, err := s.bind(streamID, &req.Node)
			if err != nil {
				return err
			}
			if req.ErrorDetail != nil {
				// A NACK names the last version the proxy accepted, so the
				// snapshot cache would answer with the rejected version at
				// once, and the proxy would reject it again, forever.
				// Treat the rejected version as seen: the next change is
				// pushed, the same one never again.
				s.mu.Lock()
				rejected := s.sent[streamID]
				s.mu.Unlock()
				s.nack(id, rejected, req.ErrorDetail.GetMessage())
				req.VersionInfo = rejected
			}
			return checkNames(id, req.ResourceNames)
		},
		StreamResponseFunc: func(_ context.Context, streamID int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.mu.Lock()
			s.sent[streamID] = resp.VersionInfo
			s.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(streamID int64, req *discovery.DeltaDiscoveryRequest) error {
			id, err := s.bind(streamID, &req.Node)
			if err != nil {
				return err
			}
			if req.ErrorDetail != nil {
				s.nack(id, req.ResponseNonce, req.ErrorDetail.GetMessage())
			}
			return checkNames(id, req.ResourceNamesSubscribe)
		},
		FetchRequestFunc: func(ctx context.Context, req *discovery.DiscoveryRequest) error {
			id, err := s.identify(ctx)
			if err != nil {
				return err
			}
			if err := checkNames(id, req.ResourceNames); err != nil {
				return err
			}
			svid, err := s.cfg.Cache.Get(ctx, id)
			if err != nil {
				return status.Errorf(codes.Unavailable, "sds: %v", err)
			}
			if s.snapshotMissing(id) {
				if err := s.publish(ctx, id, svid); err != nil {
					return err
				}
			}
			req.Node = &corev3.Node{Id: id.String()}
			return nil
		},
	}
}

func (s *Server) snapshotMissing(id spiffeid.ID) bool {
	_, err := s.snaps.GetSnapshot(id.String())
	return err != nil
}

// istioCredentialHeader is the binary metadata key Istio 1.1's node agent
// read the workload's token from (its spelling).
const istioCredentialHeader = "istio_sds_credentail_header-bin"

// TokenIdentify authenticates a stream with the caller's service-account
// token, sent as "authorization: Bearer <token>" or in Istio 1.1's
// istio_sds_credentail_header-bin, by the given authentication (the CA's
// authenticator chain, passed in so this package needs none of the CA's
// server code).
func TokenIdentify(authenticate Identify) Identify {
	return func(ctx context.Context) (spiffeid.ID, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if v := md.Get(istioCredentialHeader); len(v) > 0 && len(md.Get("authorization")) == 0 {
			md = md.Copy()
			md.Set("authorization", "Bearer "+v[0])
			ctx = metadata.NewIncomingContext(ctx, md)
		}
		id, err := authenticate(ctx)
		if err != nil {
			return spiffeid.ID{}, status.Error(codes.Unauthenticated, "sds: "+err.Error())
		}
		return id, nil
	}
}

// FixedIdentify serves one identity to every stream: the per-workload
// agent, whose socket only its own workload can open.
func FixedIdentify(id spiffeid.ID) Identify {
	return func(context.Context) (spiffeid.ID, error) { return id, nil }
}
