package federation

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/internal/atomicfile"
)

// Store keeps the last good bundle of each foreign trust domain, so that
// a restart while a peer's endpoint is down still has its roots.
type Store interface {
	// Load returns td's stored bundle and when it was stored; nil and no
	// error when there is none.
	Load(td spiffeid.TrustDomain) (*spiffebundle.Bundle, time.Time, error)
	Save(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error
}

// Toucher is a Store that also records a good fetch that changed nothing
// (the same roots and sequence), so that replicas reading the store see
// how recent the bundle is (Bundles.Reload) without a write of the
// bundle on every poll.
type Toucher interface {
	Touch(td spiffeid.TrustDomain, at time.Time) error
}

// DirStore stores each bundle as SPIFFE bundle JSON in
// <Dir>/<trust domain>.json (0600, written atomically) in a 0700
// directory; the file's modification time is when it was fetched.
type DirStore struct {
	Dir string
}

var _ Store = (*DirStore)(nil)

func (s *DirStore) path(td spiffeid.TrustDomain) string {
	// A trust domain name is lower-case letters, digits, '.', '-', '_'
	// (go-spiffe checks it): a safe file name.
	return filepath.Join(s.Dir, td.Name()+".json")
}

// Load implements Store.
func (s *DirStore) Load(td spiffeid.TrustDomain) (*spiffebundle.Bundle, time.Time, error) {
	p := s.path(td)
	b, err := atomicfile.ReadPrivate(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("federation: %w", err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("federation: %w", err)
	}
	if err := CheckDocument(b); err != nil {
		return nil, time.Time{}, fmt.Errorf("federation: %s: %w", p, err)
	}
	bundle, err := spiffebundle.Parse(td, b)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("federation: %s: %w", p, err)
	}
	return bundle, fi.ModTime(), nil
}

// Save implements Store.
func (s *DirStore) Save(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	if err := atomicfile.WriteReplace(s.path(td), doc, 0o600); err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	return nil
}
