package source

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardenmesh/warden/xds"
)

// CredentialsDir holds Gateway credentials in standalone mode, laid out
// as Kubernetes Secrets: <Path>/<namespace>/<name>/<key> (tls.crt,
// tls.key, ca.crt, or cert, key, cacert). Who may read them is granted
// per namespace, as Kubernetes RBAC grants reading a namespace's
// Secrets: <Path>/<namespace>/service-accounts lists the service
// accounts (one a line) whose gateways may have that namespace's
// credentials.
type CredentialsDir struct {
	Path string
}

// GrantsFile is the name of a namespace's grants file.
const GrantsFile = "service-accounts"

var _ xds.SecretAccess = (*CredentialsDir)(nil)

// MayReadSecrets implements xds.SecretAccess: sa is listed in ns's
// grants file.
func (d *CredentialsDir) MayReadSecrets(_ context.Context, ns, sa string) error {
	path := filepath.Join(d.Path, ns, GrantsFile)
	if !filepath.IsLocal(ns) || filepath.Base(ns) != ns {
		return fmt.Errorf("%w: namespace %q", xds.ErrNotAuthorized, ns)
	}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("credentials: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == sa {
			return nil
		}
	}
	return fmt.Errorf("%w: service account %s/%s may not read the credentials of namespace %s: add %s to %s", xds.ErrNotAuthorized, ns, sa, ns, sa, path)
}

// maxCredentialFile bounds one key's file: certificates and keys are a
// few KiB; a larger file is not read.
const maxCredentialFile = 1 << 20

// Lookup reads the Secret ns/name: its files, by name. False when the
// directory does not exist or holds no regular file.
func (d *CredentialsDir) Lookup(ns, name string) (*xds.Secret, bool) {
	if !filepath.IsLocal(ns) || !filepath.IsLocal(name) || filepath.Base(ns) != ns || filepath.Base(name) != name {
		return nil, false // a name must not leave the directory
	}
	dir := filepath.Join(d.Path, ns, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, false
	}
	data := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if info, err := e.Info(); err != nil || info.Size() > maxCredentialFile {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		data[e.Name()] = b
	}
	return &xds.Secret{Data: data}, len(data) > 0
}

// Watch polls the directory every interval and calls changed when any
// file's name, size, time or content changed, until ctx is done.
func (d *CredentialsDir) Watch(ctx context.Context, interval time.Duration, changed func()) error {
	last := d.fingerprint()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if fp := d.fingerprint(); fp != last {
				last = fp
				changed()
			}
		}
	}
}

func (d *CredentialsDir) fingerprint() [32]byte {
	h := sha256.New()
	_ = filepath.WalkDir(d.Path, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil || len(b) > maxCredentialFile {
			return nil
		}
		h.Write([]byte(p))
		h.Write([]byte{0})
		h.Write(b)
		return nil
	})
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}
