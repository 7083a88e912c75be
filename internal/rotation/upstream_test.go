package rotation

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"path/filepath"
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

// issuerList is an upstream's issuers as a test sets them.
type issuerList struct {
	mu   sync.Mutex
	list []ca.UpstreamIssuer
	err  error
}

func (l *issuerList) Issuers(context.Context) ([]ca.UpstreamIssuer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ca.UpstreamIssuer(nil), l.list...), l.err
}

func (l *issuerList) set(list ...ca.UpstreamIssuer) { l.mu.Lock(); l.list = list; l.mu.Unlock() }

type upstreamFixture struct {
	clock   *catest.Clock
	a       *ca.Authority
	up      *catest.Upstream
	issuers *issuerList
	r       *ca.Renewer
	u       *Upstream
	store   FileUpstreamStore
	log     *testkit.Buffer
	holds   atomic.Bool // the consumer holds whatever root it is asked about
	rootA   *ca.Material
}

// newUpstreamFixture: an upstream signing 10-hour intermediates under
// root A, a renewer gated by an Upstream rotator (10 minutes' grace,
// issuers read every minute, state in a file), and one consumer that
// holds a new root only when told.
func newUpstreamFixture(t *testing.T) *upstreamFixture {
	t.Helper()
	f := &upstreamFixture{clock: catest.NewClock(time.Now()), issuers: &issuerList{}, log: &testkit.Buffer{},
		store: FileUpstreamStore{Path: filepath.Join(t.TempDir(), VaultStateFile)}}
	f.rootA = catest.Root(t, ca.CAOptions{Clock: f.clock, CommonName: "root A"})
	f.up = &catest.Upstream{Root: f.rootA, Clock: f.clock}
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert, Signs: true})
	f.a = catest.Authority(t, nil, catest.WithClock(f.clock))
	f.u = f.newRotator(t)
	var err error
	f.r, err = ca.NewRenewer(ca.RenewerConfig{Authority: f.a, Upstream: f.up, TTL: 10 * time.Hour, Clock: f.clock, Gate: f.u,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *upstreamFixture) newRotator(t *testing.T) *Upstream {
	t.Helper()
	consumer := bundle.Func{Kind: "sds", OnChange: func([]*x509.Certificate) {}, Holders: func(string) (int, []string) {
		if f.holds.Load() {
			return 1, nil
		}
		return 1, []string{"spiffe://cluster.local/ns/shop/sa/cart (sds stream 1)"}
	}}
	u, err := NewUpstream(UpstreamConfig{Log: slog.New(slog.NewTextHandler(f.log, nil)), Authority: f.a, Clock: f.clock, Issuers: f.issuers,
		Consumers: func() []bundle.Consumer { return []bundle.Consumer{consumer} }, Store: f.store, Grace: 10 * time.Minute, Poll: time.Minute,
		Describe: "the test upstream", Manual: "rotate it in the test upstream",
		Switch: func(is ca.UpstreamIssuer) string { return "make " + is.ID + " the default" }})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// step moves the clock on and has the rotator read the issuers and move.
func (f *upstreamFixture) step(d time.Duration) Status {
	f.clock.Add(d)
	f.u.Step(context.Background())
	return f.u.Status()
}

func (f *upstreamFixture) bundle(t *testing.T, what string, want ...*x509.Certificate) {
	t.Helper()
	if got := f.a.Bundles().Roots(); !ca.SameRoots(got, want) {
		t.Fatalf("%s: the bundle has %d roots (first %s), want %d", what, len(got), got[0].Subject, len(want))
	}
}

// TestUpstreamRotation: a root prepared in the upstream is published at
// the next read of its issuers while the current intermediate signs on;
// activation waits for the grace, for the consumer, and for the upstream
// to sign under the new root; the old root stays until the last
// intermediate under it has expired, across a restart too.
func TestUpstreamRotation(t *testing.T) {
	f := newUpstreamFixture(t)
	if st := f.step(0); st.Phase != "none" || st.CurrentRoot != ca.Fingerprint(f.rootA.Cert) || st.Upstream != "the test upstream" {
		t.Fatalf("status before: %+v", st)
	}
	first := f.a.Material()
	f.clock.Add(time.Hour)
	rootB := catest.Root(t, ca.CAOptions{Clock: f.clock, CommonName: "root B"})
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert, Signs: true}, ca.UpstreamIssuer{ID: "b", Root: rootB.Cert})
	st := f.step(time.Minute)
	f.bundle(t, "published", f.rootA.Cert, rootB.Cert)
	if st.Phase != "published" || st.NextRoot != ca.Fingerprint(rootB.Cert) || !strings.HasPrefix(st.Waiting, "activation waits until ") {
		t.Fatalf("status once published: %+v", st)
	}
	if f.a.Material().Cert != first.Cert {
		t.Fatal("publishing changed the signing intermediate")
	}
	if st = f.step(10 * time.Minute); st.Waiting != "activation waits for 1 of 1 consumers to hold the new root: spiffe://cluster.local/ns/shop/sa/cart (sds stream 1)" {
		t.Fatalf("past the grace: %q", st.Waiting)
	}
	f.holds.Store(true)
	if st = f.step(time.Minute); st.Waiting != "activation waits for the test upstream to sign under the new root: make b the default" {
		t.Fatalf("the upstream still signs under A: %q", st.Waiting)
	}
	// The upstream switches: the renewer (kicked) gets an intermediate
	// under B, and the gate lets it through.
	f.up.Root = rootB
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert}, ca.UpstreamIssuer{ID: "b", Root: rootB.Cert, Signs: true})
	f.step(time.Minute)
	if err := f.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.bundle(t, "activated", rootB.Cert, f.rootA.Cert)
	st = f.u.Status()
	if st.Phase != "activated" || !st.RetireAfter.Equal(first.NotAfter()) || st.NextRoot != ca.Fingerprint(rootB.Cert) || st.CurrentRoot != ca.Fingerprint(f.rootA.Cert) {
		t.Fatalf("status once activated (retire after %s, the old intermediate's end): %+v", first.NotAfter(), st)
	}

	// A restart remembers the old root.
	again := f.newRotator(t)
	if st := again.Status(); st.Phase != "activated" || !st.RetireAfter.Equal(first.NotAfter()) {
		t.Fatalf("status after a restart: %+v", st)
	}
	f.clock.Add(first.NotAfter().Sub(f.clock.Now()))
	if st = f.step(0); st.Phase != "none" || st.CurrentRoot != ca.Fingerprint(rootB.Cert) {
		t.Fatalf("status once retired: %+v", st)
	}
	f.bundle(t, "retired", rootB.Cert)
	if !strings.Contains(f.log.String(), "retired the old root") || strings.Contains(f.log.String(), "level=ERROR") {
		t.Fatalf("log:\n%s", f.log.String())
	}
	if err := f.u.Request(ca.PhasePublished, false); !errors.Is(err, ca.ErrRotation) || !strings.HasSuffix(err.Error(), ": rotate it in the test upstream") {
		t.Fatalf("a step asked by hand: %v", err)
	}
}

// TestUpstreamRenewalMeetsNewRootFirst: an intermediate under a root the
// rotator has not seen publishes it and is held back, the current one
// signing on; a root withdrawn from the upstream leaves the bundle; and
// at low life a held intermediate is activated anyway, with an ERROR
// naming the consumers that lack its root.
func TestUpstreamRenewalMeetsNewRootFirst(t *testing.T) {
	f := newUpstreamFixture(t)
	first := f.a.Material()
	f.clock.Add(time.Hour)
	rootB := catest.Root(t, ca.CAOptions{Clock: f.clock, CommonName: "root B"})
	f.up.Root = rootB
	f.clock.Add(5 * time.Hour) // the intermediate's half-life
	if err := f.r.Renew(context.Background()); !errors.Is(err, ca.ErrHeld) {
		t.Fatalf("renewal under an unpublished root: %v, want it held back", err)
	}
	f.bundle(t, "published by the renewal", f.rootA.Cert, rootB.Cert)
	if f.a.Material().Cert != first.Cert {
		t.Fatal("an intermediate under an unpublished root was activated")
	}
	if renewed, failed := f.r.Counts(); renewed != 1 || failed != 0 {
		t.Fatalf("counts %d renewed, %d failed, want 1, 0 (a hold is no failure)", renewed, failed)
	}

	// The upstream's issuers do not hold B (its issuer was deleted):
	// withdrawn, but a renewal under it publishes it again.
	f.up.Root = f.rootA
	f.step(time.Minute)
	f.bundle(t, "withdrawn", f.rootA.Cert)
	f.up.Root = rootB
	f.issuers.set(ca.UpstreamIssuer{ID: "a", Root: f.rootA.Cert}, ca.UpstreamIssuer{ID: "b", Root: rootB.Cert, Signs: true})
	f.step(time.Minute)
	f.bundle(t, "published again", f.rootA.Cert, rootB.Cert)

	// Less than a fifth of the old intermediate's life left, the
	// consumer still without B: activated anyway, loudly.
	f.clock.Add(first.NotAfter().Add(-time.Hour).Sub(f.clock.Now()))
	if err := f.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.bundle(t, "forced", rootB.Cert, f.rootA.Cert)
	log := f.log.String()
	if !strings.Contains(log, "level=ERROR msg=\"ACTIVATING THE NEW ROOT ALTHOUGH NOT EVERY CONSUMER HOLDS IT") ||
		!strings.Contains(log, "spiffe://cluster.local/ns/shop/sa/cart (sds stream 1)") {
		t.Fatalf("log lacks the forced activation's ERROR naming the consumer:\n%s", log)
	}
}
