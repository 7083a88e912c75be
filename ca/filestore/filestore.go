// Package filestore keeps CA material in a local directory, in the file
// layout of Istio's cacerts Secret. It is warden's KeyStore in standalone
// mode.
//
// The directory is created 0700 and every file 0600, and both must be
// owned by the user warden runs as. Files are written to
// temporary names, synced, and then hard-linked into place, which fails
// rather than replaces when a name exists: nothing is ever overwritten.
// An advisory lock (flock on .lock) keeps a reader from seeing a store that
// another process is still writing.
package filestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/atomicfile"
)

// Store is a ca.KeyStore on a directory.
type Store struct {
	Dir string
}

var _ ca.KeyStore = (*Store)(nil)

var names = []string{ca.FileCACert, ca.FileCAKey, ca.FileCertChain, ca.FileRootCert}

// Load reads the four CA files. It returns ca.ErrNotFound only when none
// of them exists; some but not all is a partial store, reported with the
// missing names so that an operator restores it instead of warden minting a
// new root over it.
func (s *Store) Load(_ context.Context) (ca.Files, error) {
	if _, err := os.Stat(s.Dir); errors.Is(err, fs.ErrNotExist) {
		return ca.Files{}, fmt.Errorf("filestore: %s: %w", s.Dir, ca.ErrNotFound)
	}
	if err := CheckDir(s.Dir); err != nil {
		return ca.Files{}, err
	}
	if err := s.recover(); err != nil {
		return ca.Files{}, err
	}
	unlock, err := s.lock(syscall.LOCK_SH)
	if err != nil {
		return ca.Files{}, err
	}
	defer unlock()
	data := map[string][]byte{}
	var missing []string
	for _, n := range names {
		p := filepath.Join(s.Dir, n)
		b, err := atomicfile.ReadPrivate(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, n)
		case err != nil:
			return ca.Files{}, fmt.Errorf("filestore: %w", err)
		default:
			data[n] = b
		}
	}
	if len(missing) == len(names) {
		return ca.Files{}, fmt.Errorf("filestore: %s: %w", s.Dir, ca.ErrNotFound)
	}
	if len(missing) > 0 {
		return ca.Files{}, fmt.Errorf("filestore: partial CA store in %s: missing %s; refusing to generate a new root over it (restore the files, or move the directory away to start a new CA)",
			s.Dir, strings.Join(missing, ", "))
	}
	return ca.Files{
		CACert:    data[ca.FileCACert],
		CAKey:     data[ca.FileCAKey],
		CertChain: data[ca.FileCertChain],
		RootCert:  data[ca.FileRootCert],
	}, nil
}

// Create writes the four files if none exists; otherwise ca.ErrExists.
func (s *Store) Create(_ context.Context, f ca.Files) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	if err := CheckDir(s.Dir); err != nil {
		return err
	}
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(s.Dir, n)); err == nil {
			return fmt.Errorf("filestore: %s: %w", filepath.Join(s.Dir, n), ca.ErrExists)
		}
	}
	files := map[string][]byte{
		ca.FileCACert:    f.CACert,
		ca.FileCAKey:     f.CAKey,
		ca.FileCertChain: f.CertChain,
		ca.FileRootCert:  f.RootCert,
	}
	// A sentinel marks the creation in progress: if warden dies before
	// the four files are all in place, the next Load removes what was
	// written (no certificate can have been issued from an unfinished
	// store) instead of refusing a partial store for ever.
	sentinel := filepath.Join(s.Dir, creatingFile)
	if err := atomicfile.WriteReplace(sentinel, nil, 0o600); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	// The key goes last: a store without the sentinel and without a key
	// is someone's damaged store, reported as partial, never replaced.
	for _, n := range []string{ca.FileRootCert, ca.FileCertChain, ca.FileCACert, ca.FileCAKey} {
		if err := atomicfile.WriteNew(filepath.Join(s.Dir, n), files[n]); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("filestore: %s: %w", filepath.Join(s.Dir, n), ca.ErrExists)
			}
			return fmt.Errorf("filestore: %w", err)
		}
	}
	if err := os.Remove(sentinel); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	return atomicfile.SyncDir(s.Dir)
}

// creatingFile is the sentinel of a store being created.
const creatingFile = ".creating"

// recover cleans up after a crash: temporary files (which may hold key
// material) are removed, and so is a store whose creation never finished.
func (s *Store) recover() error {
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if err := atomicfile.RemoveTemps(s.Dir); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, creatingFile)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	for _, n := range names {
		if err := os.Remove(filepath.Join(s.Dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("filestore: removing an unfinished store: %w", err)
		}
	}
	if err := os.Remove(filepath.Join(s.Dir, creatingFile)); err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	return atomicfile.SyncDir(s.Dir)
}

// CheckDir refuses a data directory owned by another user than the one
// warden runs as, or that group or others may write (they could replace
// the CA's files) or read (they could read its keys): the store promises
// 0700, warden's own. The files' owner and mode are checked as they are
// read (atomicfile.ReadPrivate).
func CheckDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("filestore: %w", err)
	}
	if err := atomicfile.CheckOwner(dir, fi); err != nil {
		return fmt.Errorf("filestore: data directory %w", err)
	}
	switch perm := fi.Mode().Perm(); {
	case perm&0o022 != 0:
		return fmt.Errorf("filestore: data directory %s is writable by group or others (mode %#o): anyone with that access could replace the CA; chmod 700 %s", dir, perm, dir)
	case perm&0o055 != 0:
		return fmt.Errorf("filestore: data directory %s is readable by group or others (mode %#o) and holds private keys; chmod 700 %s", dir, perm, dir)
	}
	return nil
}

// lock takes the store's advisory lock (LOCK_SH or LOCK_EX).
func (s *Store) lock(how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.Dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filestore: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("filestore: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// LoadPluggedIn reads an operator's CA in Istio's cacerts layout from dir
// (ca-cert.pem, ca-key.pem, root-cert.pem, and cert-chain.pem when the
// signing certificate is an intermediate). It only reads: warden never
// writes an operator's files.
func LoadPluggedIn(dir string, now time.Time) (*ca.Material, error) {
	read := func(name string, optional bool) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if optional && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return b, err
	}
	var f ca.Files
	var err error
	if f.CACert, err = read(ca.FileCACert, false); err != nil {
		return nil, err
	}
	if f.CAKey, err = read(ca.FileCAKey, false); err != nil {
		return nil, err
	}
	if f.CertChain, err = read(ca.FileCertChain, true); err != nil {
		return nil, err
	}
	if f.RootCert, err = read(ca.FileRootCert, false); err != nil {
		return nil, err
	}
	m, err := ca.DecodeMaterial(f, now)
	if err != nil {
		return nil, fmt.Errorf("plugged-in CA in %s: %w", dir, err)
	}
	return m, nil
}

// MarkerFile remembers what a data directory once held (the root's and
// the token key's SHA-256), so that files deleted by accident are not
// silently replaced by new ones, which every workload would then
// distrust.
const MarkerFile = "store-identity.json"

// Marker is the content of MarkerFile.
type Marker struct {
	RootSHA256     string `json:"rootSHA256,omitempty"`
	TokenKeySHA256 string `json:"tokenKeySHA256,omitempty"`
}

// ReadMarker reads dir's marker; an absent one is the zero Marker.
func ReadMarker(dir string) (Marker, error) {
	var m Marker
	b, err := os.ReadFile(filepath.Join(dir, MarkerFile))
	if errors.Is(err, fs.ErrNotExist) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("filestore: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("filestore: %s: %v (restore it, or remove it to forget what the directory held)", filepath.Join(dir, MarkerFile), err)
	}
	return m, nil
}

// WriteMarker replaces dir's marker.
func WriteMarker(dir string, m Marker) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteReplace(filepath.Join(dir, MarkerFile), append(b, '\n'), 0o600)
}
