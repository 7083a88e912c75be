// Package atomicfile writes files so that a reader never sees a partial
// one and a crash never leaves one half-written: data goes to a private
// temporary file beside the target, is synced, then linked or renamed into
// place. It is shared by the CA's file store, the agent's PEM files and
// serve's trust bundle file.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteNew writes data to path with mode 0600, atomically and only if path
// does not exist (the error then wraps fs.ErrExist).
func WriteNew(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteReplace writes data to path with the given mode atomically,
// replacing any existing file.
func WriteReplace(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

func writeTemp(path string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+tempInfix+"*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return name, nil
}

// tempInfix marks this package's temporary files: ".<name>.tmp-<random>".
const tempInfix = ".tmp-"

// RemoveTemps removes the temporary files a crash left in dir (they may
// hold key material), leaving every other file alone.
func RemoveTemps(dir string) error {
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*"+tempInfix+"*"))
	for _, t := range tmps {
		if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing a leftover temporary file: %w", err)
		}
	}
	return nil
}

// SyncDir makes a directory's entries durable (after a create, rename
// or remove in it).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ReadPrivate reads a file that must not be readable or writable by group
// or others (a key, or a file beside one).
func ReadPrivate(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %#o; it must not be accessible to group or others (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	return os.ReadFile(path)
}
