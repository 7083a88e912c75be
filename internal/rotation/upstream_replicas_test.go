package rotation

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/testkit"
)

// memUpstreamStore is an UpstreamStore in memory, shared by replicas as
// the API server's copy is (a unit test's stand-in for
// KubeUpstreamStore, which the e2e tests use against a real one).
type memUpstreamStore struct {
	mu    sync.Mutex
	st    UpstreamState
	found bool
	saves int
}

func (m *memUpstreamStore) Load() (UpstreamState, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st
	st.Old = append([]OldRoot(nil), m.st.Old...)
	return st, m.found, nil
}

func (m *memUpstreamStore) Save(st UpstreamState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st, m.found = st, true
	m.st.Old = append([]OldRoot(nil), st.Old...)
	m.saves++
	return nil
}

// upstreamReplica is one replica: its own authority, renewer and
// rotator, over the shared upstream, issuers, clock and store.
type upstreamReplica struct {
	a       *ca.Authority
	r       *ca.Renewer
	u       *Upstream
	log     *testkit.Buffer
	leads   atomic.Bool
	kicks   atomic.Int32
	holds   atomic.Bool // its consumer holds whatever root it is asked about
	missing string
}

func newUpstreamReplica(t *testing.T, f *upstreamFixture, store UpstreamStore, name string, leads bool) *upstreamReplica {
	t.Helper()
	rp := &upstreamReplica{a: catest.Authority(t, nil, catest.WithClock(f.clock)), log: &testkit.Buffer{},
		missing: "spiffe://cluster.local/ns/shop/sa/cart (sds stream on " + name + ")"}
	rp.leads.Store(leads)
	consumer := bundle.Func{Kind: "sds", OnChange: func([]*x509.Certificate) {}, Holders: func(string) (int, []string) {
		if rp.holds.Load() {
			return 1, nil
		}
		return 1, []string{rp.missing}
	}}
	var err error
	rp.u, err = NewUpstream(UpstreamConfig{Log: slog.New(slog.NewTextHandler(rp.log, nil)), Authority: rp.a, Clock: f.clock, Issuers: f.issuers,
		Consumers: func() []bundle.Consumer { return []bundle.Consumer{consumer} }, Store: store, Poll: time.Minute,
		Describe: "the test upstream", Leading: rp.leads.Load, ReplicaTTL: 10 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rp.u.SetKick(func() { rp.kicks.Add(1) })
	rp.r, err = ca.NewRenewer(ca.RenewerConfig{Authority: rp.a, Upstream: f.up, TTL: 10 * time.Hour, Clock: f.clock, Gate: rp.u,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := rp.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return rp
}

func (rp *upstreamReplica) bundle(t *testing.T, what string, want ...*x509.Certificate) {
	t.Helper()
	if got := rp.a.Bundles().Roots(); !ca.SameRoots(got, want) {
		t.Fatalf("%s: the bundle has %d roots (first %s), want %d", what, len(got), got[0].Subject, len(want))
	}
}

func signsUnder(t *testing.T, a *ca.Authority) *x509.Certificate {
	t.Helper()
	root, err := a.Material().Anchor()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestUpstreamReplicasFollowTheLeader: with several replicas, the one
// that leads reads the issuers, publishes, activates and saves the
// state; the other follows the saved state, holds back an intermediate
// under the new root until the leader signs under it, then switches;
// the old root is kept ReplicaTTL after activation (the leader cannot
// see the others' intermediates), by a replica that restarts too, and a
// replica that comes to lead resumes from the saved state.
func TestUpstreamReplicasFollowTheLeader(t *testing.T) {
	f := newUpstreamFixture(t) // the upstream, its issuers and the clock
	store := &memUpstreamStore{}
	a := newUpstreamReplica(t, f, store, "a", true)
	b := newUpstreamReplica(t, f, store, "b", false)
	step := func(d time.Duration) {
		f.clock.Add(d)
		a.u.Step(context.Background())
		b.u.Step(context.Background())
	}
	step(0)
	if st, found, _ := store.Load(); !found || !st.Signing.Equal(f.rootA.Cert) {
		t.Fatal("the leader did not save the state it started with")
	}
	saves := store.saves

	// Both steps at once in the upstream: the leader publishes B, the
	// follower takes it up from the saved state.
	f.clock.Add(time.Hour)
	rootB := catest.Root(t, ca.CAOptions{Clock: f.clock, CommonName: "root B"})
	f.up.Root = rootB
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert}, ca.UpstreamIssuer{ID: "b", Root: rootB.Cert, Signs: true})
	step(time.Minute)
	a.bundle(t, "the leader, published", f.rootA.Cert, rootB.Cert)
	b.bundle(t, "the follower, published", f.rootA.Cert, rootB.Cert)
	if store.saves == saves {
		t.Fatal("publishing was not saved")
	}

	// The follower's renewal brings an intermediate under B: held back,
	// the leader has not activated B (its consumer lacks it).
	f.clock.Add(4 * time.Hour)
	if err := b.r.Renew(context.Background()); !errors.Is(err, ca.ErrHeld) {
		t.Fatalf("the follower's renewal under the published root: %v, want it held back", err)
	}
	if !signsUnder(t, b.a).Equal(f.rootA.Cert) {
		t.Fatal("the follower signs under the new root before the leader activated it")
	}
	b.holds.Store(true)
	step(time.Second)
	if st := a.u.Status(); st.Phase != "published" || !strings.Contains(st.Waiting, a.missing) {
		t.Fatalf("the leader's status while its consumer lacks B: %+v", st)
	}
	// Every consumer holds B: the leader kicks its renewer and activates.
	a.holds.Store(true)
	kicks := a.kicks.Load()
	step(time.Second)
	if a.kicks.Load() == kicks {
		t.Fatal("the leader did not kick its renewer once the gate opened")
	}
	if err := a.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	activatedAt := f.clock.Now()
	a.bundle(t, "the leader, activated", rootB.Cert, f.rootA.Cert)
	st := a.u.Status()
	// The leader's own intermediate under A ends at 11h; the follower's
	// may end later: ReplicaTTL from activation.
	if st.Phase != "activated" || !st.RetireAfter.Equal(activatedAt.Add(10*time.Hour)) {
		t.Fatalf("status once activated (retire after %s): %+v", activatedAt.Add(10*time.Hour), st)
	}

	// The follower sees B signing, kicks its renewer, which offers the
	// held intermediate: activated.
	kicks = b.kicks.Load()
	step(time.Second)
	if b.kicks.Load() == kicks {
		t.Fatal("the follower did not kick its renewer once the leader signed under B")
	}
	if err := b.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.bundle(t, "the follower, activated", rootB.Cert, f.rootA.Cert)

	// The follower restarts: it keeps A until retirement.
	b = newUpstreamReplica(t, f, store, "b", false)
	b.bundle(t, "the follower, restarted", rootB.Cert, f.rootA.Cert)
	// The leader goes, the follower leads: it resumes from the saved
	// state and retires A on time.
	a.leads.Store(false)
	b.leads.Store(true)
	step(time.Second)
	b.bundle(t, "the new leader", rootB.Cert, f.rootA.Cert)
	// The old leader, following, renews under B (its intermediate would
	// expire before the retirement).
	if err := a.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(activatedAt.Add(10 * time.Hour).Sub(f.clock.Now()))
	step(0)
	b.bundle(t, "the new leader, retired", rootB.Cert)
	step(time.Second) // a steps before b
	a.bundle(t, "the old leader, following", rootB.Cert)
	if st := b.u.Status(); st.Phase != "none" || st.CurrentRoot != ca.Fingerprint(rootB.Cert) {
		t.Fatalf("status once retired: %+v", st)
	}
	for name, rp := range map[string]*upstreamReplica{"a": a, "b": b} {
		if strings.Contains(rp.log.String(), "level=ERROR") {
			t.Errorf("replica %s logged an error:\n%s", name, rp.log.String())
		}
	}
}

// TestUpstreamFollowerForcedAtLowLife: a follower whose intermediate is
// about to expire while the leader still holds the new root back signs
// under it anyway (a leaf never outlives its intermediate), with an
// ERROR naming what it lacks; the saved state is the leader's still.
func TestUpstreamFollowerForcedAtLowLife(t *testing.T) {
	f := newUpstreamFixture(t)
	store := &memUpstreamStore{}
	a := newUpstreamReplica(t, f, store, "a", true)
	b := newUpstreamReplica(t, f, store, "b", false)
	first := b.a.Material()
	f.clock.Add(time.Hour)
	rootB := catest.Root(t, ca.CAOptions{Clock: f.clock, CommonName: "root B"})
	f.up.Root = rootB
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert}, ca.UpstreamIssuer{ID: "b", Root: rootB.Cert, Signs: true})
	f.clock.Add(time.Minute)
	a.u.Step(context.Background())
	b.u.Step(context.Background())
	f.clock.Add(first.NotAfter().Add(-time.Hour).Sub(f.clock.Now()))
	if err := b.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !signsUnder(t, b.a).Equal(rootB.Cert) {
		t.Fatal("the follower did not sign under the new root at low life")
	}
	b.bundle(t, "forced", rootB.Cert, f.rootA.Cert)
	if log := b.log.String(); !strings.Contains(log, `level=ERROR msg="ACTIVATING THE NEW ROOT ALTHOUGH NOT EVERY CONSUMER HOLDS IT`) || !strings.Contains(log, b.missing) {
		t.Fatalf("the follower's log lacks the forced activation's ERROR naming its consumer:\n%s", log)
	}
	if st, _, _ := store.Load(); !st.Signing.Equal(f.rootA.Cert) || st.Next == nil || !st.Next.Equal(rootB.Cert) {
		t.Fatal("the follower changed the leader's saved state")
	}
}
