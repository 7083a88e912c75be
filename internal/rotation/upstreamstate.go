package rotation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/atomicfile"
)

// UpstreamState is what an Upstream rotator remembers of the roots it
// publishes: kept across restarts (a restarted warden must still trust
// the old root while leaves under it live), public certificates only.
type UpstreamState struct {
	// Signing is the root the CA's intermediate chains to;
	// SigningNotAfter the latest end of an intermediate warden activated
	// under it (the last leaf under that root expires by then).
	Signing         *x509.Certificate
	SigningNotAfter time.Time
	// Next is a new root published beside Signing, not signing yet.
	Next        *x509.Certificate
	PublishedAt time.Time
	// ActivatedAt is when Signing took over from the root in Old.
	ActivatedAt time.Time
	// Old are roots that signed before, trusted until their last
	// intermediate (and so every leaf under it) has expired.
	Old []OldRoot
}

// OldRoot is a root being retired.
type OldRoot struct {
	Root        *x509.Certificate
	RetireAfter time.Time
}

// Roots is the trust bundle the state stands for: the signing root, the
// published one, then the old ones.
func (s *UpstreamState) Roots() []*x509.Certificate {
	out := []*x509.Certificate{s.Signing}
	if s.Next != nil {
		out = ca.MergeRoots(out, []*x509.Certificate{s.Next})
	}
	for _, o := range s.Old {
		out = ca.MergeRoots(out, []*x509.Certificate{o.Root})
	}
	return out
}

// UpstreamStore keeps an UpstreamState across restarts.
type UpstreamStore interface {
	Load() (UpstreamState, bool, error)
	Save(UpstreamState) error
}

// VaultStateFile, in a Vault-mode data directory, is where warden
// remembers the roots it publishes and retires (FileUpstreamStore).
const VaultStateFile = "vault-rotation.json"

// FileUpstreamStore keeps the state in a JSON file (0600) of the data
// directory, written atomically.
type FileUpstreamStore struct{ Path string }

var _ UpstreamStore = FileUpstreamStore{}

type upstreamJSON struct {
	Signing         string       `json:"signing"`
	SigningNotAfter time.Time    `json:"signingIntermediateNotAfter,omitzero"`
	Next            string       `json:"next,omitempty"`
	PublishedAt     time.Time    `json:"publishedAt,omitzero"`
	ActivatedAt     time.Time    `json:"activatedAt,omitzero"`
	Old             []oldRootDoc `json:"old,omitempty"`
}

type oldRootDoc struct {
	Root        string    `json:"root"`
	RetireAfter time.Time `json:"retireAfter"`
}

// Load reads the state; found is false when the file does not exist.
func (f FileUpstreamStore) Load() (UpstreamState, bool, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return UpstreamState{}, false, nil
	}
	if err != nil {
		return UpstreamState{}, false, err
	}
	st, err := decodeUpstream(b)
	if err != nil {
		return st, false, f.corrupt(err)
	}
	return st, true, nil
}

// decodeUpstream reads an UpstreamState's JSON (vault-rotation.json's,
// or the Kubernetes store's).
func decodeUpstream(b []byte) (UpstreamState, error) {
	var st UpstreamState
	var doc upstreamJSON
	if err := json.Unmarshal(b, &doc); err != nil {
		return st, err
	}
	cert := func(what, s string) (*x509.Certificate, error) {
		if s == "" {
			return nil, nil
		}
		certs, err := ca.ParseCerts([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return certs[0], nil
	}
	var err error
	if st.Signing, err = cert("signing", doc.Signing); err != nil {
		return st, err
	}
	if st.Signing == nil {
		return st, errors.New("no signing root")
	}
	if st.Next, err = cert("next", doc.Next); err != nil {
		return st, err
	}
	st.SigningNotAfter, st.PublishedAt, st.ActivatedAt = doc.SigningNotAfter, doc.PublishedAt, doc.ActivatedAt
	for i, o := range doc.Old {
		r, err := cert(fmt.Sprintf("old[%d]", i), o.Root)
		if err != nil {
			return st, err
		}
		if r == nil {
			return st, fmt.Errorf("old[%d]: no root", i)
		}
		st.Old = append(st.Old, OldRoot{Root: r, RetireAfter: o.RetireAfter})
	}
	return st, nil
}

func (f FileUpstreamStore) corrupt(err error) error {
	return fmt.Errorf("%s: %w; it is warden's record of the roots it publishes: restore it, or remove it to start afresh (warden then trusts Vault's current root alone, and leaves under a root it was retiring stop verifying)", f.Path, err)
}

// Save writes the state.
func (f FileUpstreamStore) Save(st UpstreamState) error {
	b, err := encodeUpstream(st)
	if err != nil {
		return err
	}
	return atomicfile.WriteReplace(f.Path, b, 0o600)
}

// encodeUpstream is st as JSON (public certificates only), indented.
func encodeUpstream(st UpstreamState) ([]byte, error) {
	doc := upstreamJSON{Signing: string(ca.EncodeCerts(st.Signing)), SigningNotAfter: st.SigningNotAfter,
		PublishedAt: st.PublishedAt, ActivatedAt: st.ActivatedAt}
	if st.Next != nil {
		doc.Next = string(ca.EncodeCerts(st.Next))
	}
	for _, o := range st.Old {
		doc.Old = append(doc.Old, oldRootDoc{Root: string(ca.EncodeCerts(o.Root)), RetireAfter: o.RetireAfter})
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
