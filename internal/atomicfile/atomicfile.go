// Package atomicfile writes files so that a reader never sees a partial
// one and a crash never leaves one half-written: data goes to a private
// temporary file beside the target, is synced, then linked or renamed into
// place. It is shared by the CA's file store, the agent's PEM files and
// serve's trust bundle file.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
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

// ReadPrivate reads a file that must be owned by the running user and
// not readable or writable by group or others (a key, or a file beside
// one). Its owner and mode are those of the file opened (no window
// between the check and the read).
func ReadPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := CheckOwner(path, fi); err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %#o; it must not be accessible to group or others (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	return io.ReadAll(f)
}

// CheckOwner refuses a file or directory (fi, at path) that the running
// user (the effective uid) does not own: whatever its mode, its owner can
// change it, and so replace what warden keeps there (a CA key, a token
// key) or read it. It is warden's one ownership check, beside the mode
// checks of ReadPrivate and the data directory's.
func CheckOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: the file system reports no owner", path)
	}
	me := os.Geteuid()
	if int(st.Uid) == me {
		return nil
	}
	chown := "chown"
	if fi.IsDir() {
		chown = "chown -R"
	}
	return fmt.Errorf("%s is owned by uid %d, but warden runs as uid %d: its owner could replace what warden keeps there; %s %d %s (or run warden as uid %d)",
		path, st.Uid, me, chown, me, path, st.Uid)
}
