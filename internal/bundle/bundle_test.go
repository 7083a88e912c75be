package bundle_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/rotation"
)

// fileCopy is a consumer a new issue might add: a cluster copy with a
// writer, holders and a check, added to the Set and nowhere else.
type fileCopy struct {
	mu      sync.Mutex
	held    [][]*x509.Certificate
	running chan struct{}
}

func (f *fileCopy) Name() string        { return "new-copy" }
func (f *fileCopy) Scope() bundle.Scope { return bundle.Cluster }
func (f *fileCopy) Changed(roots []*x509.Certificate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = append(f.held, roots)
}
func (f *fileCopy) Missing(fp string) (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held) > 0 && slices.ContainsFunc(f.held[len(f.held)-1], func(c *x509.Certificate) bool { return ca.Fingerprint(c) == fp }) {
		return 1, nil
	}
	return 1, []string{"the new copy"}
}
func (f *fileCopy) Run(ctx context.Context) error {
	close(f.running)
	<-ctx.Done()
	return nil
}
func (f *fileCopy) Check(_ context.Context, fp string, _ time.Time) []check.Result {
	if _, m := f.Missing(fp); len(m) > 0 {
		return []check.Result{{Check: "new-copy", Status: check.Error, Message: "lacks the root"}}
	}
	return []check.Result{{Check: "new-copy", Status: check.OK, Message: "current"}}
}

// TestAConsumerJoinsEverythingByOneAdd: a consumer added to the Set is
// told each new bundle, run by the leader, waited for by a rotation's
// status (and its activation) and inspected by check, with no other
// wiring.
func TestAConsumerJoinsEverythingByOneAdd(t *testing.T) {
	m, err := ca.NewSelfSigned(ca.CAOptions{CommonName: "old", KeyType: ca.ECDSAP256, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.NewSelfSigned(ca.CAOptions{CommonName: "new", KeyType: ca.ECDSAP256, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}, m)
	if err != nil {
		t.Fatal(err)
	}
	c := &fileCopy{running: make(chan struct{})}
	set := &bundle.Set{}
	set.Add(c, bundle.Func{Kind: "streams", In: bundle.PerReplica, OnChange: func([]*x509.Certificate) {}})
	set.Subscribe(authority.Bundles())
	r := rotation.New(rotation.Config{Authority: authority, Consumers: set, Plugged: t.TempDir()})

	newFP := ca.Fingerprint(next.Roots[0])
	holders := func() rotation.Holdings {
		for _, root := range r.Status().Roots {
			if root.SHA256 == newFP {
				return root.Consumers["new-copy"]
			}
		}
		return rotation.Holdings{Total: -1}
	}
	if got := set.Check(context.Background(), newFP, time.Now()); len(got) != 1 || got[0].Status != check.Error {
		t.Fatalf("check before the new root: %+v", got)
	}
	// The new root published beside the old: the consumer is told, holds
	// it, and rotation's view and check say so.
	if err := authority.Activate(&ca.Material{Cert: m.Cert, Key: m.Key, Roots: append(slices.Clone(m.Roots), next.Roots...)}); err != nil {
		t.Fatal(err)
	}
	if h := holders(); h.Total != 1 || len(h.Missing) != 0 {
		t.Fatalf("rotation's view of the new consumer: %+v", h)
	}
	if got := set.Check(context.Background(), newFP, time.Now()); len(got) != 1 || got[0].Status != check.OK {
		t.Fatalf("check after the new root: %+v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { set.Lead(ctx, slog.New(slog.DiscardHandler)); close(done) }()
	select {
	case <-c.running:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader did not run the new consumer")
	}
	cancel()
	<-done
	if names := strings.Join(func() (n []string) {
		for _, x := range set.Of(bundle.PerReplica) {
			n = append(n, x.Name())
		}
		return
	}(), ","); names != "streams" {
		t.Fatalf("per-replica consumers: %s", names)
	}
}
