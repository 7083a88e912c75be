package server

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/xds"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Rotation evidence: which roots each stream has ACKed. An Envoy proxy
// validates mesh peers with SDS ROOTCA, unless its namespace federates:
// then with Envoy's SPIFFE validator, whose trust bundles are inline in
// its listeners and clusters (xds/federation.go), and a ROOTCA ACK says
// nothing of what it validates with. So a stream holds a root once it
// has ACKed a ROOTCA holding it and, for each of CDS and LDS whose last
// version sent or ACKed carries the validator, a version of that type
// whose validators all hold it.

// maxRootsVersions bounds each version -> roots memory (rootsMemo).
const maxRootsVersions = 4096

type versionKey struct{ typeURL, version string }

// rootsMemo remembers the roots the most recent versions carry. A
// version is a hash of its resources, so proxies that get the same
// resources share an entry.
type rootsMemo struct {
	mu    sync.Mutex
	of    map[versionKey][]string
	order []versionKey
}

func (m *rootsMemo) get(k versionKey) ([]string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fps, ok := m.of[k]
	return fps, ok
}

// put remembers fps for k, forgetting the oldest entry past
// maxRootsVersions; a version already known is left as it is.
func (m *rootsMemo) put(k versionKey, fps []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.of == nil {
		m.of = map[versionKey][]string{}
	}
	if _, ok := m.of[k]; ok {
		return
	}
	m.of[k] = fps
	m.order = append(m.order, k)
	if len(m.order) > maxRootsVersions {
		delete(m.of, m.order[0])
		m.order = m.order[1:]
	}
}

// rememberRoots notes which roots the secrets of version v carry.
func (s *Server) rememberRoots(v string, secrets []types.Resource) {
	k := versionKey{resource.SecretType, v}
	if _, ok := s.roots.get(k); ok {
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
	s.roots.put(k, fps)
}

// ackSecrets records that a stream accepted the secrets of version v.
func (s *Server) ackSecrets(id int64, v string) {
	fps, ok := s.roots.get(versionKey{resource.SecretType, v})
	if !ok {
		return
	}
	s.mu.Lock()
	if st := s.streams[id]; st != nil {
		st.acked = fps
	}
	s.mu.Unlock()
}

// inlineTypes are the types whose resources may carry the SPIFFE
// validator's bundles, with what Missing calls them.
var inlineTypes = [2]struct{ typeURL, what string }{
	{resource.ClusterType, "clusters"},
	{resource.ListenerType, "listeners"},
}

func inlineIndex(typeURL string) int {
	for i, t := range inlineTypes {
		if t.typeURL == typeURL {
			return i
		}
	}
	return -1
}

// inlineRoots is what a version of one of inlineTypes carries: whether
// any of its resources has the SPIFFE validator (validator), and the
// local roots every such validator holds (xds.Config.ClusterRoots).
type inlineRoots struct {
	validator bool
	fps       []string
}

// inlineState is a stream's evidence for one of inlineTypes.
type inlineState struct {
	nonce, version string // of the last response sent
	sent, acked    inlineRoots
}

// holds says whether the stream holds fp as far as this type goes: with
// no validator sent or ACKed the type does not decide (ROOTCA does),
// else the version last ACKed must carry a validator holding fp. A NACK
// is never recorded, so it never counts.
func (e *inlineState) holds(fp string) bool {
	if !e.sent.validator && !e.acked.validator {
		return true
	}
	return e.acked.validator && slices.Contains(e.acked.fps, fp)
}

// rememberInline notes, for a proxy's build b from parts out and in,
// the local roots its clusters and listeners carry inline; nothing for a
// proxy that does not federate.
func (s *Server) rememberInline(b *built, out, in *part) {
	for _, t := range inlineTypes {
		var fps []string
		switch t.typeURL {
		case resource.ClusterType:
			fps = xds.CommonRoots(out.cfg.ClusterRoots, in.cfg.ClusterRoots)
		case resource.ListenerType:
			fps = xds.CommonRoots(out.cfg.ListenerRoots, in.cfg.ListenerRoots)
		}
		if fps != nil {
			s.inline.put(versionKey{t.typeURL, b.versions[t.typeURL]}, fps)
		}
	}
}

// inlineOf is what version v of typeURL carries inline, with typeURL's
// index in inlineTypes (-1 for the other types, and for every type
// when no proxy can federate).
func (s *Server) inlineOf(typeURL, v string) (int, inlineRoots) {
	i := inlineIndex(typeURL)
	if i < 0 || s.cfg.Options.TrustBundles == nil {
		return -1, inlineRoots{}
	}
	fps, ok := s.inline.get(versionKey{typeURL, v})
	return i, inlineRoots{validator: ok, fps: fps}
}

// sentInline records that st was sent version (with nonce) of
// inlineTypes[i], which carries r (s.mu held). A stream that was never
// sent a validator keeps no state.
func (st *streamState) sentInline(i int, nonce, version string, r inlineRoots) {
	if i < 0 || (st.inline == nil && !r.validator) {
		return
	}
	if st.inline == nil {
		st.inline = new([len(inlineTypes)]inlineState)
	}
	e := &st.inline[i]
	e.nonce, e.version, e.sent = nonce, version, r
}

// ackInline records an ACK of typeURL by stream id: on a delta stream of
// the response with nonce (an older response's ACK is left for the
// next), on a SotW stream of version.
func (s *Server) ackInline(id int64, typeURL, nonce, version string, delta bool) {
	var r inlineRoots
	i := inlineIndex(typeURL)
	if !delta {
		// Looked up before taking s.mu: an ACK of a version before the
		// one last sent (a push raced the ACK) is found here.
		i, r = s.inlineOf(typeURL, version)
	}
	if i < 0 || s.cfg.Options.TrustBundles == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil || st.inline == nil {
		return
	}
	e := &st.inline[i]
	switch {
	case delta && nonce != e.nonce:
	case delta || version == e.version:
		e.acked = e.sent
	default:
		e.acked = r
	}
}

// Missing reports how many streams of Envoy proxies that get their
// secrets over ADS are open, and which do not hold the root with
// fingerprint fp (ca.Fingerprint): a root rotation waits for them. A
// stream holds it once it has ACKed a ROOTCA holding it and, when its
// proxy validates peers with the SPIFFE validator (federation), the
// clusters and listeners that carry it inline. Names say what is
// missing: "<node> (ads stream N: ROOTCA not yet ACKed with the new
// root)", "… (delta ads stream N: clusters and listeners not yet ACKed
// with the new root)".
func (s *Server) Missing(fp string) (total int, missing []string) {
	if s.cfg.Secrets == nil {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, st := range s.streams {
		ps := st.ps
		if ps == nil || ps.proxy.Generator != xds.GeneratorEnvoy {
			continue
		}
		total++
		var lacks []string
		if !slices.Contains(st.acked, fp) {
			lacks = append(lacks, "ROOTCA")
		}
		if st.inline != nil {
			for i, t := range inlineTypes {
				if !st.inline[i].holds(fp) {
					lacks = append(lacks, t.what)
				}
			}
		}
		if len(lacks) == 0 {
			continue
		}
		kind := "ads stream"
		if n < 0 {
			kind, n = "delta ads stream", -n
		}
		missing = append(missing, fmt.Sprintf("%s (%s %d: %s not yet ACKed with the new root)", st.node, kind, n, andList(lacks)))
	}
	slices.Sort(missing)
	return total, missing
}

// andList is "a", "a and b", "a, b and c".
func andList(xs []string) string {
	if len(xs) < 2 {
		return strings.Join(xs, "")
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " and " + xs[len(xs)-1]
}
