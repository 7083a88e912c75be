package app

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/atomicfile"
	"github.com/wardenmesh/warden/internal/rotation"
	"github.com/wardenmesh/warden/token"
)

// tokenKeyFile holds the key warden signs standalone workload tokens with.
const tokenKeyFile = "token-key.pem"

// caSource says where CA material comes from.
type caSource struct {
	dataDir      string // standalone store (created if empty)
	pluggedIn    string // a cacerts directory, preferred when set
	root         ca.CAOptions
	allowNewRoot bool // replace a root the directory once held
}

// loadMaterial returns the CA material: the plugged-in CA when configured,
// else the data directory's, generating a self-signed root on first start
// only: a directory that once held a root (its marker says so) gets no new
// one unless allowNewRoot.
func loadMaterial(ctx context.Context, src caSource, clock ca.Clock) (m *ca.Material, origin string, err error) {
	if src.pluggedIn != "" {
		m, err := filestore.LoadPluggedIn(src.pluggedIn, clock.Now())
		return m, "plugged-in CA from " + src.pluggedIn, err
	}
	if err := os.MkdirAll(src.dataDir, 0o700); err != nil {
		return nil, "", err
	}
	if err := filestore.CheckDir(src.dataDir); err != nil {
		return nil, "", err
	}
	// A rotation that was replacing the store's files when warden died
	// is finished first.
	if done, err := rotation.RecoverRetire(ctx, src.dataDir, clock); err != nil {
		return nil, "", fmt.Errorf("CA store %s: finishing a root rotation: %w", src.dataDir, err)
	} else if done {
		origin = "root rotation finished after a restart; "
	}
	mk, err := filestore.ReadMarker(src.dataDir)
	if err != nil {
		return nil, "", err
	}
	store := &filestore.Store{Dir: src.dataDir}
	m, created, err := ca.LoadOrCreate(ctx, store, clock, func() (*ca.Material, error) {
		if mk.RootSHA256 != "" && !src.allowNewRoot {
			return nil, fmt.Errorf("the CA files are gone, but this directory held the root with SHA-256 %s: restore them (a new root would be distrusted by every workload), or pass --allow-new-root to start a new CA", mk.RootSHA256)
		}
		return newRoot(src.root)
	})
	if err != nil {
		return nil, "", fmt.Errorf("CA store %s: %w", src.dataDir, err)
	}
	fp := ca.RootFingerprint(m)
	switch {
	case mk.RootSHA256 == fp:
	case mk.RootSHA256 != "" && !created && !src.allowNewRoot:
		return nil, "", fmt.Errorf("CA store %s: the root is now %s, but the directory held %s: restore the files, or pass --allow-new-root to adopt the new root", src.dataDir, fp, mk.RootSHA256)
	default:
		mk.RootSHA256 = fp
		if err := filestore.WriteMarker(src.dataDir, mk); err != nil {
			return nil, "", err
		}
	}
	origin += "self-signed root loaded from " + src.dataDir
	if created {
		origin = "new self-signed root created in " + src.dataDir
	}
	return m, origin, nil
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// tokenIssuer loads the standalone token signing key, creating it when
// create is set and it does not exist yet — unless the directory's marker
// says it held one (every token minted with it would stop working), which
// only allowNew overrides.
func tokenIssuer(dataDir, name string, create, allowNew bool) (*token.Issuer, error) {
	path := filepath.Join(dataDir, tokenKeyFile)
	// The directory is checked like the CA's (owner, 0700) before its
	// key is trusted: whoever may change it could swap the key.
	if _, err := os.Stat(dataDir); err == nil {
		if err := filestore.CheckDir(dataDir); err != nil {
			return nil, err
		}
	}
	mk, err := filestore.ReadMarker(dataDir)
	if err != nil {
		return nil, err
	}
	b, err := atomicfile.ReadPrivate(path)
	if errors.Is(err, fs.ErrNotExist) && create && mk.TokenKeySHA256 != "" && !allowNew {
		return nil, fmt.Errorf("%s is gone, but this directory held a token key (public key SHA-256 %s): every token minted with it would stop working; restore it, or pass --allow-new-token-key", path, mk.TokenKeySHA256)
	}
	if errors.Is(err, fs.ErrNotExist) && create {
		key, gerr := ca.GenerateKey(ca.ECDSAP256)
		if gerr != nil {
			return nil, gerr
		}
		pemKey, gerr := ca.MarshalKey(key)
		if gerr != nil {
			return nil, gerr
		}
		if gerr := os.MkdirAll(dataDir, 0o700); gerr != nil {
			return nil, gerr
		}
		if gerr := filestore.CheckDir(dataDir); gerr != nil {
			return nil, gerr
		}
		if werr := atomicfile.WriteNew(path, pemKey); werr != nil && !errors.Is(werr, fs.ErrExist) {
			return nil, werr
		}
		b, err = atomicfile.ReadPrivate(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no token key at %s: start 'warden serve --data-dir %s' once first", path, dataDir)
	}
	if err != nil {
		return nil, err
	}
	key, err := ca.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if create {
		pub, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return nil, err
		}
		switch fp := fingerprint(pub); {
		case mk.TokenKeySHA256 == fp:
		case mk.TokenKeySHA256 != "" && !allowNew:
			return nil, fmt.Errorf("%s is not the token key this directory held (public key SHA-256 %s): restore it, or pass --allow-new-token-key", path, mk.TokenKeySHA256)
		default:
			mk.TokenKeySHA256 = fp
			if err := filestore.WriteMarker(dataDir, mk); err != nil {
				return nil, err
			}
		}
	}
	return token.NewIssuer(name, key, nil)
}

func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return td, fmt.Errorf("%w: --trust-domain %q: %v", errUsage, s, err)
	}
	return td, nil
}

// watchPluggedInDir takes up changes to a plugged-in CA directory, read
// every poll: a valid new set of files is activated (a new root in
// root-cert.pem is published at once, a new signing certificate signs at
// once); an invalid one (a half-written set included) is reported and the
// current CA kept. Rotating a plugged-in root is three edits: add the new
// root to root-cert.pem, later switch the signing certificate, later drop
// the old root (docs/ca.md).
func watchPluggedInDir(ctx context.Context, dir string, authority *ca.Authority, clock ca.Clock, log *slog.Logger, poll time.Duration) {
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
		m, err := filestore.LoadPluggedIn(dir, clock.Now())
		if err != nil {
			if err.Error() != lastErr {
				lastErr = err.Error()
				log.Error("ignoring invalid plugged-in CA; keeping the current one", "dir", dir, "error", lastErr)
			}
			continue
		}
		lastErr = ""
		changed, err := authority.Replace(m)
		if err != nil {
			log.Error("could not activate the plugged-in CA; keeping the current one", "dir", dir, "error", err.Error())
			continue
		}
		if !changed {
			continue
		}
		log.Info("activated plugged-in CA", "dir", dir, "subject", m.Cert.Subject.String(), "roots", len(m.Roots), "notAfter", m.Cert.NotAfter.UTC())
	}
}
