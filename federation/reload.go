package federation

import (
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SetRelationships replaces the relationships (the file was edited): a
// new trust domain starts from its stored or bootstrap bundle and is
// polled at once, a removed one is dropped (its bundle no longer handed
// out), and a changed one (endpoint, profile, namespaces, bootstrap)
// keeps the bundle it holds and is polled at once with its new
// settings; a bootstrap bundle still in use is replaced by the new one.
// It reports whether anything changed; subscribers hear of it.
func (b *Bundles) SetRelationships(rels []*Relationship) (bool, error) {
	next := map[spiffeid.TrustDomain]*Relationship{}
	for _, r := range rels {
		if r.TrustDomain == b.cfg.Local {
			return false, fmt.Errorf("federation: %s is the local trust domain", r.TrustDomain)
		}
		if _, dup := next[r.TrustDomain]; dup {
			return false, fmt.Errorf("federation: %s is named twice", r.TrustDomain)
		}
		next[r.TrustDomain] = r
	}
	b.mu.Lock()
	changed := false
	for td := range b.entries {
		if next[td] == nil {
			delete(b.entries, td)
			changed = true
		}
	}
	for td, r := range next {
		old := b.entries[td]
		switch {
		case old == nil:
			b.mu.Unlock() // newEntry reads the store
			e := b.newEntry(r)
			b.mu.Lock()
			b.entries[td] = e
		case sameRelationship(old.rel, r):
			continue
		default:
			// A new entry object: a fetch under the old settings still
			// running lands in the old one and is dropped (take).
			e := *old
			e.rel = r
			if e.from == "bootstrap" {
				e.bundle = nil
				e.from = ""
				if r.Bootstrap != nil {
					e.bundle, e.from = r.Bootstrap.Clone(), "bootstrap"
				}
				e.interval = b.interval(e.bundle)
			}
			b.entries[td] = &e
		}
		changed = true
	}
	subs := slices.Clone(b.subs)
	b.mu.Unlock()
	if !changed {
		return false, nil
	}
	select {
	case b.changed <- struct{}{}:
	default:
	}
	for _, f := range subs {
		f()
	}
	return true, nil
}

// sameRelationship says whether a and c configure the same relationship.
func sameRelationship(a, c *Relationship) bool {
	if a.TrustDomain != c.TrustDomain || a.URL != c.URL || a.Profile != c.Profile || a.EndpointID != c.EndpointID || !slices.Equal(a.Namespaces, c.Namespaces) {
		return false
	}
	if (a.Bootstrap == nil) != (c.Bootstrap == nil) {
		return false
	}
	return a.Bootstrap == nil || a.Bootstrap.Equal(c.Bootstrap)
}
