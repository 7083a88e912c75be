// Package bundle holds the consumers of the trust bundle: every place
// warden copies the mesh's roots to (SDS and ADS streams, the
// istio-ca-root-cert ConfigMaps, the istio.<sa> Secrets, a file), behind
// one interface, in one Set that subscribes them to ca.Bundles, runs the
// leader's writers, gates a root rotation's activation on what they
// still miss, and lets warden check inspect the cluster's copies. A new
// consumer is one Add; rotation and check read the same Set.
package bundle

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/check"
)

// Scope says who serves a consumer.
type Scope int

const (
	// PerReplica consumers live in every replica (the streams it
	// serves); each replica reports its own to a rotation.
	PerReplica Scope = iota
	// Cluster consumers are the cluster's copies (ConfigMaps, Secrets),
	// written by the leader alone.
	Cluster
)

// Consumer is one copy of the trust bundle.
type Consumer interface {
	// Name is the consumer's kind, as rotation's status and logs name
	// it: "sds", "ads", "configmaps", "sa-secrets", ...
	Name() string
	Scope() Scope
	// Changed is told every new bundle (signing root first). It must
	// not block: a consumer does its work elsewhere.
	Changed(roots []*x509.Certificate)
	// Missing reports how many holders the consumer has and which of
	// them do not hold the root with fingerprint fp (ca.Fingerprint) yet.
	Missing(fp string) (total int, missing []string)
}

// Runner is a consumer with work of its own (a Cluster consumer's
// writer), run by the leader until ctx is done.
type Runner interface {
	Run(ctx context.Context) error
}

// Checker is a Cluster consumer warden check can inspect from outside a
// running serve: whether its copies hold the root fp.
type Checker interface {
	Check(ctx context.Context, fp string, now time.Time) []check.Result
}

// Set is every consumer of one process.
type Set struct {
	mu        sync.Mutex
	consumers []Consumer
}

// Add adds consumers; names must be unique.
func (s *Set) Add(cs ...Consumer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		if slices.ContainsFunc(s.consumers, func(o Consumer) bool { return o.Name() == c.Name() }) {
			panic("bundle: two consumers named " + c.Name()) // wiring error
		}
		s.consumers = append(s.consumers, c)
	}
}

// All lists the consumers, in the order they were added.
func (s *Set) All() []Consumer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.consumers)
}

// Of lists the consumers of one scope.
func (s *Set) Of(scope Scope) []Consumer {
	var out []Consumer
	for _, c := range s.All() {
		if c.Scope() == scope {
			out = append(out, c)
		}
	}
	return out
}

// Subscribe tells every consumer of the set each new bundle of b, in the
// order they were added (consumers added later are told too).
func (s *Set) Subscribe(b *ca.Bundles) {
	b.Subscribe(func(roots []*x509.Certificate) {
		for _, c := range s.All() {
			c.Changed(roots)
		}
	})
}

// Lead runs every Cluster consumer that is a Runner until ctx is done
// (the leader's work), logging a failure; it returns when all have.
func (s *Set) Lead(ctx context.Context, log *slog.Logger) {
	var wg sync.WaitGroup
	for _, c := range s.Of(Cluster) {
		r, ok := c.(Runner)
		if !ok {
			continue
		}
		wg.Go(func() {
			if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				log.Error("leader task failed", "consumer", c.Name(), "error", err.Error())
			}
		})
	}
	wg.Wait()
}

// Check inspects every Cluster consumer that is a Checker.
func (s *Set) Check(ctx context.Context, fp string, now time.Time) []check.Result {
	var out []check.Result
	for _, c := range s.Of(Cluster) {
		if ch, ok := c.(Checker); ok {
			out = append(out, ch.Check(ctx, fp, now)...)
		}
	}
	return out
}

// Func is a Consumer made of functions (a stream server's RootsChanged
// and Missing, a file writer).
type Func struct {
	Kind     string
	In       Scope
	OnChange func(roots []*x509.Certificate)
	// Holders is Missing; nil for a consumer with no holders to wait for
	// (a file agents poll: rotation's grace covers it).
	Holders func(fp string) (int, []string)
}

var _ Consumer = Func{}

func (f Func) Name() string                      { return f.Kind }
func (f Func) Scope() Scope                      { return f.In }
func (f Func) Changed(roots []*x509.Certificate) { f.OnChange(roots) }
func (f Func) Missing(fp string) (total int, missing []string) {
	if f.Holders == nil {
		return 0, nil
	}
	return f.Holders(fp)
}
