package filestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/atomicfile"
)

// RotationDir, under the data directory, holds a root rotation in
// progress: the prepared CA in next/ (a Store, created like the main one)
// and the rotation's state in state.json. It is gone when no rotation is
// under way.
const RotationDir = "rotation"

const rotationStateFile = "state.json"

// NextStore is the prepared CA's store.
func (s *Store) NextStore() *Store {
	return &Store{Dir: filepath.Join(s.Dir, RotationDir, "next")}
}

// ReadRotation reads the rotation state; found is false when there is no
// rotation (a prepared CA without a state, left by a crash in prepare, is
// removed).
func (s *Store) ReadRotation() (st ca.RotationState, found bool, err error) {
	st, found, err = s.PeekRotation()
	if err == nil && !found {
		if err := os.RemoveAll(filepath.Join(s.Dir, RotationDir, "next")); err != nil {
			return st, false, fmt.Errorf("filestore: %w", err)
		}
	}
	return st, found, err
}

// PeekRotation is ReadRotation without its clean-up: for a reader beside
// the running serve (warden ca info), which must not remove the prepared
// CA that serve may be writing.
func (s *Store) PeekRotation() (st ca.RotationState, found bool, err error) {
	path := filepath.Join(s.Dir, RotationDir, rotationStateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("filestore: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("filestore: %s: %v", path, err)
	}
	return st, true, nil
}

// WriteRotation replaces the rotation state.
func (s *Store) WriteRotation(st ca.RotationState) error {
	dir := filepath.Join(s.Dir, RotationDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteReplace(filepath.Join(dir, rotationStateFile), append(b, '\n'), 0o600)
}

// RemoveRotation forgets the rotation: the state first (so that a crash
// half-way leaves a prepared CA without a state, which ReadRotation
// removes), then the prepared CA.
func (s *Store) RemoveRotation() error {
	dir := filepath.Join(s.Dir, RotationDir)
	if err := os.Remove(filepath.Join(dir, rotationStateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("filestore: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("filestore: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	return nil
}

// Promote replaces the main store's four files with f, each atomically
// (the key first, then the certificates). It is the one place a store's
// files are overwritten, and only at the end of a rotation whose state
// says Retiring: a crash half-way is finished by the next start, from the
// prepared CA that is still in place.
func (s *Store) Promote(_ context.Context, f ca.Files) error {
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	files := map[string][]byte{
		ca.FileCACert:    f.CACert,
		ca.FileCAKey:     f.CAKey,
		ca.FileCertChain: f.CertChain,
		ca.FileRootCert:  f.RootCert,
	}
	for _, n := range []string{ca.FileCAKey, ca.FileCACert, ca.FileCertChain, ca.FileRootCert} {
		if err := atomicfile.WriteReplace(filepath.Join(s.Dir, n), files[n], 0o600); err != nil {
			return fmt.Errorf("filestore: %w", err)
		}
	}
	return atomicfile.SyncDir(s.Dir)
}
