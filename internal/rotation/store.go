package rotation

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
)

// AdminSocket, in the data directory, is where 'warden ca rotate' reaches
// the running 'warden serve': a Unix socket as private as the directory
// (0600), so only who could read the CA key can drive its rotation.
const AdminSocket = "admin.sock"

// Store keeps a rotation across restarts.
type Store interface {
	// Load returns the rotation in progress, with its prepared CA.
	Load(ctx context.Context) (st ca.RotationState, next *ca.Material, found bool, err error)
	Prepare(ctx context.Context, st ca.RotationState, next *ca.Material) error
	Save(ctx context.Context, st ca.RotationState) error
	// Retire makes next the CA for good and forgets the rotation.
	Retire(ctx context.Context, st ca.RotationState, next *ca.Material) error
	Abort(ctx context.Context) error
}

// DirStore is the standalone Store: the data directory.
type DirStore struct {
	Dir   string
	Clock ca.Clock
}

func (d *DirStore) store() *filestore.Store { return &filestore.Store{Dir: d.Dir} }

func (d *DirStore) Load(ctx context.Context) (ca.RotationState, *ca.Material, bool, error) {
	return d.load(ctx, d.store().ReadRotation)
}

// Peek is Load for a reader beside the running serve (warden ca info):
// it leaves alone a prepared CA that serve may be writing.
func (d *DirStore) Peek(ctx context.Context) (ca.RotationState, *ca.Material, bool, error) {
	return d.load(ctx, d.store().PeekRotation)
}

func (d *DirStore) load(ctx context.Context, read func() (ca.RotationState, bool, error)) (ca.RotationState, *ca.Material, bool, error) {
	st, found, err := read()
	if err != nil || !found {
		return st, nil, false, err
	}
	f, err := d.store().NextStore().Load(ctx)
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress: %w", err)
	}
	next, err := ca.DecodeMaterial(f, d.Clock.Now())
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress: %w", err)
	}
	if fp := ca.RootFingerprint(next); fp != st.NextRootSHA256 {
		return st, nil, false, fmt.Errorf("the prepared CA's root is %s, but the rotation prepared %s: restore %s", fp, st.NextRootSHA256, filepath.Join(d.Dir, filestore.RotationDir))
	}
	return st, next, true, nil
}

func (d *DirStore) Prepare(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	// A crash between the two leaves a prepared CA without a state, which
	// the next Load removes.
	_ = d.store().RemoveRotation()
	f, err := next.Encode()
	if err != nil {
		return err
	}
	if err := d.store().NextStore().Create(ctx, f); err != nil {
		return err
	}
	return d.store().WriteRotation(st)
}

func (d *DirStore) Save(_ context.Context, st ca.RotationState) error {
	return d.store().WriteRotation(st)
}

func (d *DirStore) Retire(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	st.Retiring = true
	if err := d.store().WriteRotation(st); err != nil {
		return err
	}
	return finishRetire(ctx, d.Dir, next)
}

func (d *DirStore) Abort(context.Context) error { return d.store().RemoveRotation() }

// finishRetire replaces the main store with the prepared CA, records its
// root in the marker, and removes the rotation. Each step can be redone.
func finishRetire(ctx context.Context, dir string, next *ca.Material) error {
	f, err := next.Encode()
	if err != nil {
		return err
	}
	s := &filestore.Store{Dir: dir}
	if err := s.Promote(ctx, f); err != nil {
		return err
	}
	mk, err := filestore.ReadMarker(dir)
	if err != nil {
		return err
	}
	mk.RootSHA256 = ca.RootFingerprint(next)
	if err := filestore.WriteMarker(dir, mk); err != nil {
		return err
	}
	return s.RemoveRotation()
}

// RecoverRetire finishes a retirement a crash interrupted, before the
// main store is read.
func RecoverRetire(ctx context.Context, dir string, clock ca.Clock) (bool, error) {
	d := &DirStore{Dir: dir, Clock: clock}
	st, next, found, err := d.Load(ctx)
	if err != nil || !found || !st.Retiring {
		return false, err
	}
	return true, finishRetire(ctx, dir, next)
}
