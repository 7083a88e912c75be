package server

import (
	"fmt"
	"slices"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/xds"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// Rotation evidence: which roots each stream has ACKed.

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
		ps := st.ps
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
