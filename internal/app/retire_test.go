package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/rotation"
)

// TestRetireSurvivesACrash: warden dies while the new CA replaces the
// data directory's files (the key is new, the certificate still old): the
// next start finishes the job instead of refusing a store whose key does
// not match its certificate.
func TestRetireSurvivesACrash(t *testing.T) {
	clock := catest.NewClock(time.Now())
	dir := filepath.Join(t.TempDir(), "data")
	opts := ca.CAOptions{Organization: "cluster.local", TTL: 10 * time.Hour, MaxPathLen: -1, Clock: clock}
	m, _, err := loadMaterial(context.Background(), caSource{dataDir: dir, root: opts}, clock)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ca.Config{TrustDomain: catest.TrustDomain, DefaultTTL: time.Hour, MaxTTL: time.Hour, Clock: clock}
	authority, err := ca.New(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	r := rotation.New(rotation.Config{Authority: authority, CA: cfg, Store: &rotation.DirStore{Dir: dir, Clock: clock},
		NewCA: func() (*ca.Material, error) { return ca.NewSelfSigned(opts) }})
	if err := r.Load(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute) // the new root must outlive the old
	if err := r.Request(ca.PhaseActivated, true); err != nil {
		t.Fatal(err)
	}
	if err := r.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := authority.Material()
	store := &filestore.Store{Dir: dir}
	st, found, err := store.ReadRotation()
	if err != nil || !found || st.Phase != ca.PhaseActivated {
		t.Fatalf("rotation state: %+v %v", st, err)
	}
	st.Retiring = true
	if err := store.WriteRotation(st); err != nil {
		t.Fatal(err)
	}
	files, _ := next.Encode()
	if err := os.WriteFile(filepath.Join(dir, ca.FileCAKey), files.CAKey, 0o600); err != nil {
		t.Fatal(err)
	}
	got, origin, err := loadMaterial(context.Background(), caSource{dataDir: dir}, clock)
	if err != nil {
		t.Fatalf("a start after a crash in retirement: %v", err)
	}
	if !got.Cert.Equal(next.Cert) || !strings.Contains(origin, "rotation finished") {
		t.Fatalf("the store is not the new CA (origin %q)", origin)
	}
	mk, _ := filestore.ReadMarker(dir)
	if mk.RootSHA256 != ca.RootFingerprint(next) {
		t.Fatal("the marker does not name the new root")
	}
}
