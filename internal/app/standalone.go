package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/atomicfile"
	"github.com/wardenmesh/warden/token"
)

// tokenKeyFile holds the key warden signs standalone workload tokens with.
const tokenKeyFile = "token-key.pem"

// caSource says where CA material comes from.
type caSource struct {
	dataDir   string // standalone store (created if empty)
	pluggedIn string // a cacerts directory, preferred when set
	root      ca.CAOptions
}

// loadMaterial returns the CA material: the plugged-in CA when configured,
// else the data directory's, generating a self-signed root on first start.
func loadMaterial(ctx context.Context, src caSource, clock ca.Clock) (m *ca.Material, origin string, err error) {
	if src.pluggedIn != "" {
		m, err := filestore.LoadPluggedIn(src.pluggedIn, clock.Now())
		return m, "plugged-in CA from " + src.pluggedIn, err
	}
	store := &filestore.Store{Dir: src.dataDir}
	m, created, err := ca.LoadOrCreate(ctx, store, clock, func() (*ca.Material, error) {
		return ca.NewSelfSigned(src.root)
	})
	if err != nil {
		return nil, "", fmt.Errorf("CA store %s: %w", src.dataDir, err)
	}
	origin = "self-signed root loaded from " + src.dataDir
	if created {
		origin = "new self-signed root created in " + src.dataDir
	}
	return m, origin, nil
}

// tokenIssuer loads the standalone token signing key, creating it when
// create is set and it does not exist yet.
func tokenIssuer(dataDir, name string, create bool) (*token.Issuer, error) {
	path := filepath.Join(dataDir, tokenKeyFile)
	b, err := atomicfile.ReadPrivate(path)
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
	return token.NewIssuer(name, key, nil)
}

func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return td, fmt.Errorf("%w: --trust-domain %q: %v", errUsage, s, err)
	}
	return td, nil
}
