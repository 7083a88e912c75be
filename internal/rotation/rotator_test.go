package rotation

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/filestore"
)

type rotatorFixture struct {
	clock     *catest.Clock
	dir       string
	authority *ca.Authority
	r         *Rotator
	old       *ca.Material
	held      atomic.Bool // the fake consumer holds the new root
}

// newRotatorFixture: a standalone data directory with a 10-hour root, a
// rotator on an injected clock (no grace, automatic at 20% of life left,
// leaves of at most an hour) and one consumer that holds the new root
// only when told.
func newRotatorFixture(t *testing.T) *rotatorFixture {
	t.Helper()
	f := &rotatorFixture{clock: catest.NewClock(time.Now()), dir: filepath.Join(t.TempDir(), "data")}
	opts := ca.CAOptions{Organization: "cluster.local", CommonName: "warden root CA", TTL: 10 * time.Hour, MaxPathLen: -1, Clock: f.clock}
	m := newStore(t, f.dir, opts, f.clock)
	cfg := ca.Config{TrustDomain: catest.TrustDomain, DefaultTTL: time.Hour, MaxTTL: time.Hour, Clock: f.clock}
	var err error
	if f.authority, err = ca.New(cfg, m); err != nil {
		t.Fatal(err)
	}
	f.old = m
	f.r = New(Config{Log: slog.New(slog.DiscardHandler), Authority: f.authority, CA: cfg, Store: &DirStore{Dir: f.dir, Clock: f.clock},
		NewCA: func() (*ca.Material, error) { return ca.NewSelfSigned(opts) }, AutoFraction: 0.2})
	if err := f.r.Load(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	f.r.AddConsumer("test", func(fp string) (int, []string) {
		if f.held.Load() {
			return 1, nil
		}
		return 1, []string{"the test consumer"}
	})
	return f
}

func (f *rotatorFixture) tick(t *testing.T) {
	t.Helper()
	if err := f.r.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// newStore makes a data directory's CA store, as warden serve's first
// start does.
func newStore(t *testing.T, dir string, opts ca.CAOptions, clock ca.Clock) *ca.Material {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, _, err := ca.LoadOrCreate(context.Background(), &filestore.Store{Dir: dir}, clock, func() (*ca.Material, error) { return ca.NewSelfSigned(opts) })
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAutomaticRotation: with the clock moved to where less than 20% of
// the root's life is left, the rotator starts by itself, publishes, waits
// for the consumer that lacks the new root (and says so), activates once
// it has it (the new root first in the bundle), waits out the old key's last leaf, and
// retires: the data directory then holds the new root alone.
func TestAutomaticRotation(t *testing.T) {
	f := newRotatorFixture(t)
	f.tick(t)
	if st := f.r.Status(); st.Phase != "none" || f.r.Started() != 0 {
		t.Fatalf("a young root was rotated: %+v", st)
	}
	f.clock.Add(8*time.Hour + 30*time.Minute) // 15% left
	f.tick(t)
	st := f.r.Status()
	if st.Phase != "published" || st.Target != "retired" || f.r.Started() != 1 {
		t.Fatalf("after the threshold: %+v", st)
	}
	if !strings.Contains(st.Waiting, "the test consumer") || st.Consumers["test"].Total != 1 {
		t.Fatalf("activation does not name the consumer it waits for: %+v", st)
	}
	if n := len(f.authority.Bundles().Roots()); n != 2 {
		t.Fatalf("published bundle has %d roots", n)
	}
	if !f.authority.Material().Cert.Equal(f.old.Cert) {
		t.Fatal("signing moved before the consumer held the new root")
	}
	f.held.Store(true)
	f.tick(t)
	st = f.r.Status()
	if st.Phase != "activated" {
		t.Fatalf("after the consumer ACKed: %+v", st)
	}
	roots := f.authority.Bundles().Roots()
	if f.authority.Material().Cert.Equal(f.old.Cert) || !roots[0].Equal(f.authority.Material().Cert) || !roots[1].Equal(f.old.Cert) {
		t.Fatal("activated: want the new root signing, first in the bundle, the old one second")
	}
	if !strings.Contains(st.Waiting, "retirement waits until") {
		t.Fatalf("retirement does not wait for the old leaves: %+v", st)
	}
	f.clock.Add(time.Hour + time.Second)
	f.tick(t)
	st = f.r.Status()
	if st.Phase != "none" || len(f.authority.Bundles().Roots()) != 1 || f.authority.Bundles().Roots()[0].Equal(f.old.Cert) {
		t.Fatalf("after the old leaves expired: %+v", st)
	}
	// The data directory now is the new CA, and says so.
	b, _ := os.ReadFile(filepath.Join(f.dir, ca.FileRootCert))
	certs, _ := ca.ParseCerts(b)
	mk, _ := filestore.ReadMarker(f.dir)
	if len(certs) != 1 || !certs[0].Equal(f.authority.Material().Cert) || mk.RootSHA256 != ca.RootFingerprint(f.authority.Material()) {
		t.Fatal("the data directory does not hold the new root")
	}
	if _, err := os.Stat(filepath.Join(f.dir, filestore.RotationDir)); !os.IsNotExist(err) {
		t.Fatalf("the rotation directory is left: %v", err)
	}
}

// TestRotationResumesAndAborts: a rotation survives a restart in its
// phase; aborted before activation, the bundle is the old root alone
// again; after activation it cannot be aborted.
func TestRotationResumesAndAborts(t *testing.T) {
	f := newRotatorFixture(t)
	f.clock.Add(time.Minute) // the new root must outlive the old one
	if err := f.r.Request(ca.PhasePublished, false); err != nil {
		t.Fatal(err)
	}
	f.tick(t)
	// A restart: a new authority and rotator over the same directory.
	g := newRotatorFixtureAt(t, f)
	if st := g.r.Status(); st.Phase != "published" || len(g.authority.Bundles().Roots()) != 2 {
		t.Fatalf("after a restart: %+v", st)
	}
	if err := g.r.Abort(); err != nil {
		t.Fatal(err)
	}
	if roots := g.authority.Bundles().Roots(); len(roots) != 1 || !roots[0].Equal(f.old.Cert) {
		t.Fatal("an aborted rotation left the new root in the bundle")
	}
	if err := g.r.Request(ca.PhaseActivated, true); err != nil {
		t.Fatal(err)
	}
	g.tick(t)
	if err := g.r.Abort(); err == nil {
		t.Fatal("an activated rotation was aborted")
	}
	if err := g.r.Request(ca.PhasePrepared, false); err == nil {
		t.Fatal("a rotation went backwards")
	}
}

// newRotatorFixtureAt restarts f: the same directory and clock.
func newRotatorFixtureAt(t *testing.T, f *rotatorFixture) *rotatorFixture {
	t.Helper()
	g := &rotatorFixture{clock: f.clock, dir: f.dir, old: f.old}
	opts := ca.CAOptions{Organization: "cluster.local", TTL: 10 * time.Hour, MaxPathLen: -1, Clock: f.clock}
	m := newStore(t, g.dir, opts, g.clock)
	cfg := ca.Config{TrustDomain: catest.TrustDomain, DefaultTTL: time.Hour, MaxTTL: time.Hour, Clock: g.clock}
	var err error
	if g.authority, err = ca.New(cfg, m); err != nil {
		t.Fatal(err)
	}
	g.r = New(Config{Log: slog.New(slog.DiscardHandler), Authority: g.authority, CA: cfg, Store: &DirStore{Dir: g.dir, Clock: g.clock},
		NewCA: func() (*ca.Material, error) { return ca.NewSelfSigned(opts) }})
	if err := g.r.Load(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return g
}
