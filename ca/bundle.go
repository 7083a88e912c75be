package ca

import (
	"crypto/x509"
	"slices"
	"sync"
)

// Bundles is the one owner of "the trust bundle changed": it holds the
// current roots and tells every subscriber when they change (SDS ROOTCA on
// every stream, ADS proxies, the istio-ca-root-cert ConfigMaps, istio.<sa>
// Secrets, root-cert.pem files, the agent's consumers). In the spirit of
// go-spiffe's x509bundle.Source plus SPIRE's bundle-updated notifier: the
// Authority feeds its own on every activation; the agent feeds one with
// the roots its CA answers carry.
type Bundles struct {
	mu    sync.Mutex
	roots []*x509.Certificate
	subs  map[int]func([]*x509.Certificate)
	next  int
	// notify serialises deliveries, so subscribers see changes in order.
	notify sync.Mutex
}

// NewBundles starts with roots (may be empty).
func NewBundles(roots []*x509.Certificate) *Bundles {
	return &Bundles{roots: slices.Clone(roots), subs: map[int]func([]*x509.Certificate){}}
}

// Roots returns the current roots (a copy).
func (b *Bundles) Roots() []*x509.Certificate {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.roots)
}

// Set replaces the roots; when they differ from the current ones (as a
// set, in order) every subscriber is called with the new roots, in
// subscription order, after Set has released its lock. It reports whether
// they changed.
func (b *Bundles) Set(roots []*x509.Certificate) bool {
	b.notify.Lock()
	defer b.notify.Unlock()
	b.mu.Lock()
	if SameRoots(b.roots, roots) {
		b.mu.Unlock()
		return false
	}
	b.roots = slices.Clone(roots)
	ids := make([]int, 0, len(b.subs))
	for id := range b.subs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	fs := make([]func([]*x509.Certificate), 0, len(ids))
	for _, id := range ids {
		fs = append(fs, b.subs[id])
	}
	b.mu.Unlock()
	for _, f := range fs {
		f(slices.Clone(roots))
	}
	return true
}

// Subscribe calls f with every new set of roots until cancel is called.
func (b *Bundles) Subscribe(f func(roots []*x509.Certificate)) (cancel func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := b.next
	b.next++
	b.subs[id] = f
	return func() {
		b.mu.Lock()
		delete(b.subs, id)
		b.mu.Unlock()
	}
}

// SameRoots reports whether a and b hold the same certificates in the same
// order: the one "did the roots change" check.
func SameRoots(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}
