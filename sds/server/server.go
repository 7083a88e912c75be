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
// "default" (the identity's certificate and key), "ROOTCA" (the local
// trust bundle, never a foreign one), the identity's own SPIFFE ID, or a
// trust domain's ID "spiffe://<td>" (the bundle of that trust domain
// alone: the local one, or a foreign one the identity federates with, as
// SPIRE's agent names federated bundles); any other name is refused. A
// stream whose first request names ROOTCA alone is a bundle stream: it
// gets the bundle and no certificate is issued for it (a node agent
// following the bundle). A bundle stream whose node metadata sets
// FederatedBundlesKey to true also receives, without naming them, the
// bundles of the foreign trust domains its identity federates with, each
// as spiffe://<td> (warden's agent, which cannot know them in advance).
//
// The server remembers which roots each stream last ACKed, so that a root
// rotation can wait until every stream holds the new root (Missing).
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/token"
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
	// Federated returns the foreign bundles id may receive, by trust
	// domain (its namespace's federation relationships); nil: none.
	Federated func(id spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate
	Log       *slog.Logger
}

// Server is an SDS server.
type Server struct {
	cfg      Config
	snaps    cachev3.SnapshotCache
	xds      xds.Server
	version  atomic.Uint64
	mu       sync.Mutex
	streams  map[int64]*stream
	idents   map[spiffeid.ID]int // open certificate streams per identity
	fedIDs   map[spiffeid.ID]int // open bundle streams with foreign bundles per identity
	versions map[string][]string // snapshot version -> fingerprints of its ROOTCA roots (the last maxVersions)
	order    []string
	building sync.Mutex // serialises snapshot builds
}

type stream struct {
	id    spiffeid.ID
	ctx   context.Context
	kind  streamKind
	fed   bool     // a bundle stream that gets the foreign bundles too
	sent  string   // last version sent (SotW NACK handling)
	nonce string   // last delta response nonce, and its version
	nver  string   //
	acked []string // fingerprints of the roots last ACKed
}

type streamKind int

const (
	kindUnbound streamKind = iota // no request yet
	kindCert                      // certificates (and maybe ROOTCA)
	kindBundle                    // ROOTCA only
)

// bundleKey is the snapshot every bundle stream shares; a bundle stream
// that receives foreign bundles has its identity's own,
// bundleKey~<SPIFFE ID>.
const bundleKey = "warden~bundle"

// FederatedBundlesKey, set to true in a bundle stream's node metadata,
// asks for the foreign bundles of the trust domains the stream's identity
// federates with, alongside ROOTCA.
const FederatedBundlesKey = "WARDEN_FEDERATED_BUNDLES"

// maxVersions bounds the version -> roots memory.
const maxVersions = 4096

// New makes a server. Call Register to add it to a gRPC server, and
// sds.Config.OnUpdate = s.Updated so rotations are pushed.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Cache == nil || cfg.Identify == nil || cfg.Roots == nil {
		return nil, errors.New("sds/server: Cache, Identify and Roots are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Federated == nil {
		cfg.Federated = func(spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate { return nil }
	}
	s := &Server{cfg: cfg, streams: map[int64]*stream{}, idents: map[spiffeid.ID]int{}, fedIDs: map[spiffeid.ID]int{}, versions: map[string][]string{}}
	s.snaps = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	s.xds = xds.NewServer(ctx, s.snaps, s.callbacks())
	if err := s.publishBundle(ctx); err != nil {
		return nil, err
	}
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
	if err := s.publishBundle(context.Background()); err != nil {
		s.cfg.Log.Error("sds: cannot publish the bundle", "error", err.Error())
	}
	s.publishFederatedBundles(nil)
	s.pushAll()
}

// pushAll pushes every certificate stream's resources again.
func (s *Server) pushAll() { s.pushWhere(nil) }

// pushWhere pushes again the resources of every certificate stream whose
// identity match selects (nil: all).
func (s *Server) pushWhere(match func(spiffeid.ID) bool) {
	s.mu.Lock()
	ids := make([]spiffeid.ID, 0, len(s.idents))
	for id := range s.idents {
		if match == nil || match(id) {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		if svid := s.cfg.Cache.Current(id); svid != nil {
			s.Updated(svid)
		}
	}
}

// FederationChanged pushes every certificate stream's foreign bundles
// again (a foreign trust domain's roots changed), and every bundle
// stream's that receives them.
func (s *Server) FederationChanged() { s.FederationChangedFor(nil) }

// FederationChangedFor is FederationChanged for the streams whose
// identity match selects (nil: all): a node agent pushes one namespace's
// new foreign bundles to that namespace's streams alone, and leaves the
// others' untouched (no new version, no push).
func (s *Server) FederationChangedFor(match func(spiffeid.ID) bool) {
	s.publishFederatedBundles(match)
	s.pushWhere(match)
}

// appendFederated appends each foreign trust domain's bundle id
// federates with, under its own name (spiffe://<td>), never merged into
// ROOTCA (SPIFFE Federation §4.2).
func (s *Server) appendFederated(secrets []types.Resource, id spiffeid.ID) ([]types.Resource, error) {
	for td, froots := range s.cfg.Federated(id) {
		if td == id.TrustDomain() || len(froots) == 0 {
			continue
		}
		vc, err := sds.ValidationContext(td.IDString(), froots)
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, vc)
	}
	return secrets, nil
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
	roots := s.cfg.Roots()
	root, err := sds.ValidationContext(sds.RootName, roots)
	if err != nil {
		return err
	}
	own, err := sds.ValidationContext(id.TrustDomain().IDString(), roots)
	if err != nil {
		return err
	}
	secrets := []types.Resource{def, named, root, own}
	if secrets, err = s.appendFederated(secrets, id); err != nil {
		return err
	}
	version := s.newVersion(roots)
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.SecretType: secrets,
	})
	if err != nil {
		return err
	}
	return s.snaps.SetSnapshot(ctx, id.String(), snap)
}

// publishBundle builds the bundle streams' snapshot.
func (s *Server) publishBundle(ctx context.Context) error {
	s.building.Lock()
	defer s.building.Unlock()
	roots := s.cfg.Roots()
	if len(roots) == 0 {
		return nil
	}
	root, err := sds.ValidationContext(sds.RootName, roots)
	if err != nil {
		return err
	}
	snap, err := cachev3.NewSnapshot(s.newVersion(roots), map[resource.Type][]types.Resource{resource.SecretType: {root}})
	if err != nil {
		return err
	}
	return s.snaps.SetSnapshot(ctx, bundleKey, snap)
}

// publishFederatedBundles rebuilds the snapshot of every identity match
// selects (nil: all) with a bundle stream that receives foreign bundles.
func (s *Server) publishFederatedBundles(match func(spiffeid.ID) bool) {
	s.mu.Lock()
	ids := make([]spiffeid.ID, 0, len(s.fedIDs))
	for id := range s.fedIDs {
		if match == nil || match(id) {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		if err := s.publishBundleFor(context.Background(), id); err != nil {
			s.cfg.Log.Error("sds: cannot publish the bundles", "id", id.String(), "error", err.Error())
		}
	}
}

// publishBundleFor builds the snapshot of id's bundle streams that
// receive foreign bundles: ROOTCA (the local bundle) and, each under its
// own name, the bundle of every trust domain id federates with.
func (s *Server) publishBundleFor(ctx context.Context, id spiffeid.ID) error {
	s.building.Lock()
	defer s.building.Unlock()
	roots := s.cfg.Roots()
	if len(roots) == 0 {
		return nil
	}
	root, err := sds.ValidationContext(sds.RootName, roots)
	if err != nil {
		return err
	}
	secrets := []types.Resource{root}
	if secrets, err = s.appendFederated(secrets, id); err != nil {
		return err
	}
	snap, err := cachev3.NewSnapshot(s.newVersion(roots), map[resource.Type][]types.Resource{resource.SecretType: secrets})
	if err != nil {
		return err
	}
	return s.snaps.SetSnapshot(ctx, bundleKey+"~"+id.String(), snap)
}

// bundleNames are the names a bundle stream that receives foreign bundles
// subscribes to: ROOTCA and the trust domains id federates with, sorted.
func (s *Server) bundleNames(id spiffeid.ID) []string {
	var names []string
	for td, roots := range s.cfg.Federated(id) {
		if td != id.TrustDomain() && len(roots) > 0 {
			names = append(names, td.IDString())
		}
	}
	slices.Sort(names)
	return append([]string{sds.RootName}, names...)
}

// Streams is the number of open SDS streams (metrics).
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Pushes counts the snapshots set: each certificate or bundle change
// pushed to the streams that hold it (metrics).
func (s *Server) Pushes() uint64 { return s.version.Load() }

// newVersion numbers a snapshot and remembers the roots it carries.
func (s *Server) newVersion(roots []*x509.Certificate) string {
	v := strconv.FormatUint(s.version.Add(1), 10)
	fps := make([]string, len(roots))
	for i, r := range roots {
		fps[i] = ca.Fingerprint(r)
	}
	s.mu.Lock()
	s.versions[v] = fps
	s.order = append(s.order, v)
	if len(s.order) > maxVersions {
		delete(s.versions, s.order[0])
		s.order = s.order[1:]
	}
	s.mu.Unlock()
	return v
}

// ack records that a stream accepted version (s.mu held).
func (s *Server) ack(st *stream, version string) {
	if fps, ok := s.versions[version]; ok {
		st.acked = fps
	}
}

// Missing reports, of the open streams that asked for ROOTCA's holder
// (every stream past its first request), how many there are and which
// have not ACKed a bundle holding the root with fingerprint fp
// (ca.Fingerprint): a root
// rotation waits for them. Names are "<SPIFFE ID> (stream N)".
func (s *Server) Missing(fp string) (total int, missing []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, st := range s.streams {
		if st.kind == kindUnbound {
			continue
		}
		total++
		if !slices.Contains(st.acked, fp) {
			missing = append(missing, fmt.Sprintf("%s (sds stream %d)", st.id, n))
		}
	}
	slices.Sort(missing)
	return total, missing
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

// open authenticates a new stream; its first request says what it is for
// (bind).
func (s *Server) open(ctx context.Context, streamID int64) error {
	id, err := s.identify(ctx)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.streams[streamID] = &stream{id: id, ctx: ctx}
	s.mu.Unlock()
	return nil
}

// certificates makes a stream a certificate stream: its identity's
// certificate is fetched (issued if need be) and its snapshot built.
func (s *Server) certificates(st *stream) error {
	svid, err := s.cfg.Cache.Get(st.ctx, st.id)
	if errors.Is(err, sds.ErrExpired) {
		return status.Errorf(codes.Unavailable, "sds: the certificate for %s has expired and could not be renewed yet (is the CA reachable?); %q alone is still served", st.id, sds.RootName)
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "sds: no certificate for %s yet: %v", st.id, err)
	}
	s.mu.Lock()
	if st.kind != kindUnbound {
		s.mu.Unlock()
		return nil
	}
	st.kind = kindCert
	first := s.idents[st.id] == 0
	s.idents[st.id]++
	s.mu.Unlock()
	if first {
		return s.publish(st.ctx, st.id, svid)
	}
	return nil
}

func (s *Server) closed(streamID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[streamID]
	if !ok {
		return
	}
	delete(s.streams, streamID)
	if st.fed {
		if s.fedIDs[st.id]--; s.fedIDs[st.id] == 0 {
			delete(s.fedIDs, st.id)
			s.snaps.ClearSnapshot(bundleKey + "~" + st.id.String())
		}
	}
	if st.kind != kindCert {
		return
	}
	if s.idents[st.id]--; s.idents[st.id] == 0 {
		delete(s.idents, st.id)
		// The key is in the snapshot: keep it no longer than a stream
		// needs it. Under s.mu, so that a stream opening now (which
		// publishes afresh, being first) cannot lose its snapshot.
		s.snaps.ClearSnapshot(st.id.String())
	}
}

// InUse reports whether a stream serves id (sds.Config.InUse).
func (s *Server) InUse(id spiffeid.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idents[id] > 0
}

// checkNames refuses names other than default, ROOTCA, the stream's own
// SPIFFE ID, its trust domain's ID and those of the trust domains it
// federates with.
func (s *Server) checkNames(id spiffeid.ID, names []string) error {
	for _, n := range names {
		switch {
		case n == sds.DefaultName, n == sds.RootName, n == id.String(), n == id.TrustDomain().IDString():
		case strings.HasPrefix(n, "spiffe://") && !strings.Contains(strings.TrimPrefix(n, "spiffe://"), "/"):
			td, err := spiffeid.TrustDomainFromString(n)
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "sds: resource %q: %v", n, err)
			}
			if _, ok := s.cfg.Federated(id)[td]; !ok {
				return status.Errorf(codes.PermissionDenied, "sds: %s does not federate with trust domain %s (its namespace is not in a federation relationship with it)", id, td.Name())
			}
		case strings.HasPrefix(n, "spiffe://"):
			return status.Errorf(codes.PermissionDenied, "sds: this stream is authenticated as %s and cannot receive %s", id, n)
		default:
			return status.Errorf(codes.InvalidArgument, "sds: unknown resource %q (served: %q, %q, or the caller's SPIFFE ID)", n, sds.DefaultName, sds.RootName)
		}
	}
	return nil
}

// bind points a request at its stream's identity, whatever node it names,
// so a proxy can only ever be served its own secrets. The first request
// decides the stream's kind: ROOTCA alone makes a bundle stream, anything
// else a certificate stream.
func (s *Server) bind(streamID int64, node **corev3.Node, names []string) (*stream, error) {
	s.mu.Lock()
	st, ok := s.streams[streamID]
	s.mu.Unlock()
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "sds: stream not authenticated")
	}
	if err := s.checkNames(st.id, names); err != nil {
		return nil, err
	}
	bundleOnly := len(names) > 0 && !slices.ContainsFunc(names, func(n string) bool { return n != sds.RootName })
	s.mu.Lock()
	kind := st.kind
	first := false
	if kind == kindUnbound && bundleOnly {
		st.kind, kind = kindBundle, kindBundle
		if *node != nil && (*node).GetMetadata().GetFields()[FederatedBundlesKey].GetBoolValue() {
			st.fed, first = true, s.fedIDs[st.id] == 0
			s.fedIDs[st.id]++
		}
	}
	fed := st.fed
	s.mu.Unlock()
	if first {
		if err := s.publishBundleFor(st.ctx, st.id); err != nil {
			return nil, err
		}
	}
	switch {
	case kind == kindUnbound:
		if err := s.certificates(st); err != nil {
			return nil, err
		}
	case kind == kindBundle && !bundleOnly:
		return nil, status.Errorf(codes.InvalidArgument, "sds: this stream asked for %q alone first; open another stream for certificates", sds.RootName)
	}
	n := &corev3.Node{Id: st.id.String()}
	switch {
	case fed:
		n.Id = bundleKey + "~" + st.id.String()
	case kind == kindBundle:
		n.Id = bundleKey
	}
	if *node != nil {
		n.Cluster, n.Metadata = (*node).Cluster, (*node).Metadata
	}
	*node = n
	return st, nil
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
			st, err := s.bind(streamID, &req.Node, req.ResourceNames)
			if err != nil {
				return err
			}
			if st.fed {
				// Read after this callback: the foreign bundles the stream
				// did not (could not) name.
				req.ResourceNames = s.bundleNames(st.id)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if req.ErrorDetail != nil {
				// A NACK names the last version the proxy accepted, so the
				// snapshot cache would answer with the rejected version at
				// once, and the proxy would reject it again, forever.
				// Treat the rejected version as seen: the next change is
				// pushed, the same one never again.
				rejected := st.sent
				s.nack(st.id, rejected, req.ErrorDetail.GetMessage())
				req.VersionInfo = rejected
				return nil
			}
			if req.VersionInfo != "" && req.ResponseNonce != "" {
				s.ack(st, req.VersionInfo)
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, streamID int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.mu.Lock()
			if st := s.streams[streamID]; st != nil {
				st.sent = resp.VersionInfo
			}
			s.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(streamID int64, req *discovery.DeltaDiscoveryRequest) error {
			st, err := s.bind(streamID, &req.Node, req.ResourceNamesSubscribe)
			if err != nil {
				return err
			}
			if st.fed && len(req.ResourceNamesSubscribe) > 0 {
				req.ResourceNamesSubscribe = s.bundleNames(st.id)
			}
			if req.ErrorDetail != nil {
				s.nack(st.id, req.ResponseNonce, req.ErrorDetail.GetMessage())
				return nil
			}
			s.mu.Lock()
			if req.ResponseNonce != "" && req.ResponseNonce == st.nonce {
				s.ack(st, st.nver)
			}
			s.mu.Unlock()
			return nil
		},
		StreamDeltaResponseFunc: func(streamID int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			s.mu.Lock()
			if st := s.streams[streamID]; st != nil {
				st.nonce, st.nver = resp.Nonce, resp.SystemVersionInfo
			}
			s.mu.Unlock()
		},
		FetchRequestFunc: func(ctx context.Context, req *discovery.DiscoveryRequest) error {
			id, err := s.identify(ctx)
			if err != nil {
				return err
			}
			if err := s.checkNames(id, req.ResourceNames); err != nil {
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

// IstioCredentialHeader is the binary metadata key Istio 1.1's node agent
// read the workload's token from (its spelling): the bare token, no
// scheme (see token.FromRaw).
const IstioCredentialHeader = "istio_sds_credentail_header-bin"

// CallerToken is the service-account token an SDS call carries: in
// "authorization: Bearer <token>" (token.FromAuthorization: RFC 6750, the
// scheme case-insensitive) or bare in IstioCredentialHeader
// (token.FromRaw). Both at once are refused: Istio's agent would take the
// one, warden used to take the other, and a caller must not be read two
// ways. No credentials at all is token.ErrNoToken.
func CallerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth, istio := md.Get("authorization"), md.Get(IstioCredentialHeader)
	var tok string
	var err error
	switch {
	case len(auth) > 0 && len(istio) > 0:
		return "", errors.New("sds: both authorization and " + IstioCredentialHeader + " sent; send one")
	case len(istio) > 0:
		tok, err = token.FromRaw(IstioCredentialHeader, istio)
	default:
		tok, err = token.FromAuthorization(auth)
	}
	if err != nil {
		return "", fmt.Errorf("sds: %w", err)
	}
	return tok, nil
}

// TokenHint is what a caller refused for its token is told to send.
const TokenHint = "send the workload's token as authorization: Bearer <token>"

// TokenIdentify authenticates a stream by the given authentication (the
// CA's authenticator chain, passed in so this package needs none of the
// CA's server code). A token in IstioCredentialHeader is handed on as
// "authorization: Bearer <token>"; a malformed one is refused here. A
// stream with no token goes on to the chain (an agent's ROOTCA stream
// authenticates with its certificate).
func TokenIdentify(authenticate Identify) Identify {
	return func(ctx context.Context) (spiffeid.ID, error) {
		tok, err := CallerToken(ctx)
		switch {
		case errors.Is(err, token.ErrNoToken):
		case err != nil:
			return spiffeid.ID{}, status.Error(codes.Unauthenticated, err.Error()+": "+TokenHint)
		default:
			md, _ := metadata.FromIncomingContext(ctx)
			md = md.Copy()
			delete(md, IstioCredentialHeader)
			md.Set("authorization", "Bearer "+tok)
			ctx = metadata.NewIncomingContext(ctx, md)
		}
		id, err := authenticate(ctx)
		if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
			return spiffeid.ID{}, err // the credentials could not be checked: retry
		}
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
