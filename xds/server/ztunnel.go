package server

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
)

// ztunnel's resources: the compiled mesh (xds/ambient) held once,
// encoded once, and served incrementally over delta ADS.
//
// The state keeps every resource of both types as a shared
// discovery.Resource (name, version, encoded Any) and a log of the names
// each generation changed. A stream keeps, per type, only the generation
// it was brought up to and, when it subscribes by name, its names: a
// push sends what the log names since then, so what a ztunnel costs the
// server does not grow with the mesh. A stream so far behind that the
// log no longer reaches its generation is ended with Unavailable;
// ztunnel reconnects naming the versions it holds and gets the
// difference.

// ztTypes are the types served to ztunnel, in order.
var ztTypes = [2]string{ambient.AddressType, ambient.AuthorizationType}

// maxZtLog bounds the change log (entries), above twice the resources.
const maxZtLog = 1 << 16

type ztChange struct {
	gen  uint64
	typ  int
	name string
}

type ztState struct {
	mu    sync.RWMutex
	gen   uint64
	res   [2]map[string]*discovery.Resource
	byIP  map[string][]string
	pods  map[string]xds.ZtunnelPod // "ns/name" -> the registry's pod
	log   []ztChange
	floor uint64 // the log holds every change after this generation
}

func newZtState() *ztState {
	return &ztState{res: [2]map[string]*discovery.Resource{{}, {}}, byIP: map[string][]string{}, pods: map[string]xds.ZtunnelPod{}}
}

// encodeZt encodes a compiled resource once, with its version (a
// digest of its encoding).
func encodeZt(typeURL string, r ambient.Resource) (*discovery.Resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r.Message)
	if err != nil {
		return nil, fmt.Errorf("xds: encode %s %s: %w", typeURL, r.Name, err)
	}
	h := sha256.Sum256(b)
	return &discovery.Resource{Name: r.Name, Version: hex.EncodeToString(h[:8]), Resource: &anypb.Any{TypeUrl: typeURL, Value: b}}, nil
}

// SetAmbient compiles ztunnel's resources from in and pushes what
// changed to every ztunnel stream; streams whose pod now runs as
// another identity are ended. Calls are serialized.
func (s *Server) SetAmbient(in ambient.Input) error {
	start := time.Now()
	s.ztApply.Lock()
	defer s.ztApply.Unlock()
	in.TrustDomain = s.cfg.Options.TrustDomain.Name()
	in.RootNamespace = s.cfg.Options.RootNamespace
	in.Domain = s.cfg.Options.Domain
	if s.cfg.ClusterID != "" {
		in.ClusterID = s.cfg.ClusterID
	}
	res := ambient.Compile(in)
	var next [2]map[string]*discovery.Resource
	// A resource that cannot be encoded (a string that is not UTF-8 from
	// an unvalidated source) is left out and named; the rest is served.
	var unencodable []error
	for i, l := range [2][]ambient.Resource{res.Addresses, res.Authorizations} {
		next[i] = make(map[string]*discovery.Resource, len(l))
		for _, r := range l {
			e, err := encodeZt(ztTypes[i], r)
			if err != nil {
				unencodable = append(unencodable, err)
				continue
			}
			next[i][r.Name] = e
		}
	}
	pods := make(map[string]xds.ZtunnelPod, len(in.Pods))
	for _, p := range in.Pods {
		sa := p.ServiceAccount
		if sa == "" {
			sa = "default"
		}
		pods[p.Namespace+"/"+p.Name] = xds.ZtunnelPod{Known: true, ServiceAccount: sa, IPs: p.IPs}
	}
	z := s.zt
	z.mu.Lock()
	gen := z.gen + 1
	var changes []ztChange
	for i := range ztTypes {
		prev := z.res[i]
		for n, r := range next[i] {
			// An unchanged resource keeps its shared copy.
			if p, ok := prev[n]; ok && p.Version == r.Version {
				next[i][n] = p
				continue
			}
			changes = append(changes, ztChange{gen, i, n})
		}
		for n := range prev {
			if _, ok := next[i][n]; !ok {
				changes = append(changes, ztChange{gen, i, n})
			}
		}
	}
	z.res, z.byIP, z.pods = next, res.ByIP, pods
	if len(changes) > 0 {
		z.gen = gen
		sort.Slice(changes, func(i, j int) bool { return changes[i].name < changes[j].name })
		z.log = append(z.log, changes...)
		if limit := max(maxZtLog, 2*(len(next[0])+len(next[1]))); len(z.log) > limit {
			cut := len(z.log) - limit
			z.floor = z.log[cut-1].gen
			z.log = append([]ztChange(nil), z.log[cut:]...)
		}
	}
	z.mu.Unlock()
	for _, r := range res.Reports {
		s.reportOnce(r)
	}
	s.ztMu.Lock()
	streams := make([]*ztStream, 0, len(s.ztStreams))
	for st := range s.ztStreams {
		streams = append(streams, st)
	}
	s.ztMu.Unlock()
	for _, st := range streams {
		if err := s.mayServeZtunnel(st.id, st.proxy, pods); err != nil {
			s.cfg.Log.Warn("xds: closing a ztunnel stream whose pod no longer runs as its identity", "node", st.proxy.ID,
				"identity", st.id.String(), "reason", status.Convert(err).Message())
			st.revoke(err)
			if o := s.cfg.Observer; o != nil {
				o.StreamRevoked()
			}
			continue
		}
		if len(changes) > 0 {
			st.wake(start)
		}
	}
	if len(unencodable) > 0 {
		return fmt.Errorf("xds: %d ztunnel resources left out, the rest served: %w", len(unencodable), errors.Join(unencodable...))
	}
	return nil
}

// reportOnce logs a compiler report the first time it is seen.
func (s *Server) reportOnce(r string) {
	s.mu.Lock()
	fresh := !s.reported[r]
	if fresh {
		if s.reported == nil {
			s.reported = map[string]bool{}
		}
		s.reported[r] = true
	}
	s.mu.Unlock()
	if fresh {
		s.cfg.Log.Warn("xds: ztunnel configuration report", "report", r)
	}
}

// mayServeZtunnel is xds.MayServeZtunnel against the registry's pods, as
// a gRPC status.
func (s *Server) mayServeZtunnel(id spiffeid.ID, p *xds.Proxy, pods map[string]xds.ZtunnelPod) error {
	if err := xds.MayServeZtunnel(id, p, pods[p.Namespace+"/"+p.Pod], s.cfg.TrustedNodeAccounts, s.cfg.Options.TrustDomain); err != nil {
		return status.Error(codes.PermissionDenied, "xds: "+trimNotAuthorized(err))
	}
	return nil
}

func trimNotAuthorized(err error) string {
	return strings.TrimPrefix(err.Error(), xds.ErrNotAuthorized.Error()+": ")
}

// changesSince are the changes of type typ after generation gen, each
// name once, and the current generation; ok is false when the log no
// longer reaches back to gen (z.mu held for reading).
func (z *ztState) changesSince(typ int, gen uint64) (names []string, ok bool) {
	if gen < z.floor {
		return nil, false
	}
	i := sort.Search(len(z.log), func(i int) bool { return z.log[i].gen > gen })
	seen := map[string]bool{}
	for _, c := range z.log[i:] {
		if c.typ == typ && !seen[c.name] {
			seen[c.name] = true
			names = append(names, c.name)
		}
	}
	return names, true
}
