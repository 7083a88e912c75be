package server

import (
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Status: what warden check and the metrics read.

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
