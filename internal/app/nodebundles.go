package app

import (
	"context"
	"crypto/x509"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/sds"
)

// nodeBundles is a node agent's view of the CA's bundles: which foreign
// trust domains a workload federates with is the CA's decision, per
// namespace, so the node agent keeps one bundle stream (followBundle) per
// namespace with identities in its cache, authenticated with a current
// SVID of that namespace, and relays each namespace's foreign bundles to
// that namespace's SDS streams alone. ROOTCA is the same for all: each
// stream's is applied as the agent's, before it is ACKed, so every
// stream the CA counts among a rotation's consumers holds what it ACKed.
// A namespace's stream closes when its last identity leaves the cache
// (sds.Config.OnDrop).
type nodeBundles struct {
	a      *agent
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ns     map[nsKey]*nsBundles
	ending map[nsKey]chan struct{} // a closed namespace's stream still winding down
}

// nsKey names a namespace of a trust domain.
type nsKey struct {
	td   spiffeid.TrustDomain
	name string
}

// nsOf is the namespace of a workload ID (spiffe://<td>/ns/<ns>/sa/<sa>);
// other IDs have none, and federate with nothing.
func nsOf(id spiffeid.ID) (nsKey, bool) {
	ns, ok := federation.Namespace(id, id.TrustDomain())
	return nsKey{id.TrustDomain(), ns}, ok
}

// nsBundles is one namespace's stream and what it received.
type nsBundles struct {
	ids       map[spiffeid.ID]chan struct{} // identities held; each channel closes when it leaves
	foreign   map[spiffeid.TrustDomain][]*x509.Certificate
	delivered bool
	got       chan struct{} // closed at the first bundle
	stop      context.CancelFunc
	done      chan struct{} // closed once the stream has ended
}

// firstBundleWait bounds how long a new SDS stream waits for its
// namespace's first bundle from the CA before it is served without.
const firstBundleWait = 5 * time.Second

func newNodeBundles(ctx context.Context, a *agent) *nodeBundles {
	ctx, cancel := context.WithCancel(ctx)
	return &nodeBundles{a: a, ctx: ctx, cancel: cancel, ns: map[nsKey]*nsBundles{}, ending: map[nsKey]chan struct{}{}}
}

// add notes that the cache holds id (a new SVID), and opens its
// namespace's stream if it is the first of it.
func (n *nodeBundles) add(id spiffeid.ID) {
	k, ok := nsOf(id)
	if !ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	b := n.ns[k]
	if b == nil {
		ctx, stop := context.WithCancel(n.ctx)
		b = &nsBundles{ids: map[spiffeid.ID]chan struct{}{}, got: make(chan struct{}), stop: stop, done: make(chan struct{})}
		n.ns[k] = b
		prev := n.ending[k]
		src := bundleSource{
			log:  n.a.log.With("namespace", k.name),
			svid: func() (*sds.SVID, <-chan struct{}) { return n.svid(b) },
			apply: func(roots []*x509.Certificate, foreign map[spiffeid.TrustDomain][]*x509.Certificate) {
				n.apply(k, b, roots, foreign)
			},
		}
		n.wg.Go(func() {
			defer close(b.done)
			if prev != nil {
				<-prev // never two streams for one namespace
			}
			n.a.followBundle(ctx, src)
		})
	}
	if _, ok := b.ids[id]; !ok {
		b.ids[id] = make(chan struct{})
	}
}

// remove notes that id left the cache: a stream it authenticates is
// reopened with another identity of the namespace, and the namespace's
// stream is closed when it was the last.
func (n *nodeBundles) remove(id spiffeid.ID) {
	k, ok := nsOf(id)
	if !ok {
		return
	}
	n.mu.Lock()
	b := n.ns[k]
	if b == nil {
		n.mu.Unlock()
		return
	}
	if gone, ok := b.ids[id]; ok {
		close(gone)
		delete(b.ids, id)
	}
	last := len(b.ids) == 0
	if last {
		b.stop()
		delete(n.ns, k)
		n.ending[k] = b.done
		go func() {
			<-b.done
			n.mu.Lock()
			if n.ending[k] == b.done {
				delete(n.ending, k)
			}
			n.mu.Unlock()
		}()
	}
	none := len(n.ns) == 0
	n.mu.Unlock()
	if !last {
		return
	}
	n.a.log.Info("no identity of the namespace is left: its trust bundle stream to the CA is closed", "namespace", k.name)
	if none {
		// Nothing follows the bundle: new SVIDs' roots stand in again.
		n.a.mu.Lock()
		n.a.streamed = nil
		n.a.mu.Unlock()
	}
}

// svid is the SVID b's stream opens with: of the namespace's identities
// with a current SVID, the one valid longest.
func (n *nodeBundles) svid(b *nsBundles) (*sds.SVID, <-chan struct{}) {
	n.mu.Lock()
	ids := make(map[spiffeid.ID]chan struct{}, len(b.ids))
	for id, gone := range b.ids {
		ids[id] = gone
	}
	n.mu.Unlock()
	var best *sds.SVID
	var left chan struct{}
	for id, gone := range ids {
		if s := n.a.cache.Current(id); s != nil && (best == nil || s.Certs[0].NotAfter.After(best.Certs[0].NotAfter)) {
			best, left = s, gone
		}
	}
	if best == nil {
		return nil, nil
	}
	return best, left
}

// apply takes a namespace stream's response: ROOTCA as the agent's, the
// foreign bundles as the namespace's, pushed to its streams alone when
// they changed.
func (n *nodeBundles) apply(k nsKey, b *nsBundles, roots []*x509.Certificate, foreign map[spiffeid.TrustDomain][]*x509.Certificate) {
	n.mu.Lock()
	changed := !sameForeign(b.foreign, foreign)
	b.foreign = foreign
	first := !b.delivered
	b.delivered = true
	n.mu.Unlock()
	n.a.streamedRoots(roots)
	if changed {
		n.a.sds.FederationChangedFor(func(id spiffeid.ID) bool {
			o, ok := nsOf(id)
			return ok && o == k
		})
	}
	if first {
		close(b.got)
	}
}

// foreign is what the node agent relays to a stream of id: the foreign
// bundles the CA sent for id's namespace (sdsserver.Config.Federated).
func (n *nodeBundles) foreign(id spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate {
	k, ok := nsOf(id)
	if !ok {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if b := n.ns[k]; b != nil {
		return b.foreign
	}
	return nil
}

// wait returns once id's namespace has its first bundle from the CA (or
// after firstBundleWait, or when ctx is done): a new SDS stream is
// identified only then, so that the names it may ask for are known.
func (n *nodeBundles) wait(ctx context.Context, id spiffeid.ID) {
	k, ok := nsOf(id)
	if !ok {
		return
	}
	n.mu.Lock()
	b := n.ns[k]
	n.mu.Unlock()
	if b == nil {
		return
	}
	t := time.NewTimer(firstBundleWait)
	defer t.Stop()
	select {
	case <-b.got:
	case <-ctx.Done():
	case <-t.C:
		n.a.log.Warn("no trust bundle from the CA yet for the namespace; serving the stream without its foreign bundles", "namespace", k.name, "waited", firstBundleWait.String())
	}
}

// close ends every namespace's stream and waits for them.
func (n *nodeBundles) close() {
	n.mu.Lock()
	n.cancel() // under mu: no add starts a stream after this
	n.mu.Unlock()
	n.wg.Wait()
}
