// Package unixsock listens on Unix sockets that appear at their path with
// their final mode: the agent's SDS and Workload API sockets and serve's
// admin socket.
//
// A socket bound at its path and then chmod-ed has, in between, the mode
// the umask leaves (0777 under umask 0: anyone may connect), and the
// chmod follows a symlink planted at the path meanwhile. The umask cannot
// be narrowed around the bind either: it is the process's, and every
// goroutine creating a file meanwhile would get it. So Listen binds the
// socket in a private directory (0700, created by warden inside the
// target's parent; nobody else can enter it), gives it its mode there,
// and only then links it to its path. link(2) never replaces a name and
// never follows a symlink: if something appeared at the path, Listen
// fails and leaves it alone.
package unixsock

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// MaxPath is the longest socket path Linux binds (sun_path holds 108
// bytes with the terminating NUL).
const MaxPath = 107

// Listen listens on a Unix socket at path with mode (permission bits
// only: 0600 for its owner, 0660 to share with a group).
//
// Missing parent directories are created 0700 (0710 when mode lets the
// group in: the group must be able to reach the socket). The parent is
// refused if others or the group may write it without the sticky bit,
// or if it is owned by neither the running user nor root: whoever may
// change it could replace the socket.
//
// An existing path is never followed nor overwritten: a symlink, a file
// or a directory there is an error; so is a socket something answers on,
// or one another user owns. Only a stale socket of the running user's (a
// crashed agent's) is removed.
//
// Closing the listener removes the socket if it is still the one Listen
// made.
func Listen(path string, mode fs.FileMode) (net.Listener, error) {
	if mode&^fs.ModePerm != 0 {
		return nil, fmt.Errorf("unixsock: %s: mode %v: want permission bits only", path, mode)
	}
	dir := filepath.Dir(path)
	dirMode := fs.FileMode(0o700)
	if mode&0o060 != 0 {
		dirMode |= 0o010
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("unixsock: %w", err)
	}
	if err := checkParent(dir); err != nil {
		return nil, err
	}
	if err := clearPath(path); err != nil {
		return nil, err
	}
	tmpDir, err := privateDir(dir)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > MaxPath {
		return nil, fmt.Errorf("unixsock: %s: the path is too long to create the socket safely beside it (%s is %d bytes, at most %d): choose a shorter path", path, tmp, len(tmp), MaxPath)
	}
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("unixsock: %w", err)
	}
	ul := l.(*net.UnixListener)
	// tmp goes with its directory below; Close removes path instead.
	ul.SetUnlinkOnClose(false)
	// tmp is in a directory only warden can enter: no symlink can be
	// planted there and no one can connect before the mode is set.
	if err := os.Chmod(tmp, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("unixsock: %w", err)
	}
	if err := os.Link(tmp, path); err != nil {
		l.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("unixsock: %s appeared while the socket was being made; left alone", path)
		}
		return nil, fmt.Errorf("unixsock: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("unixsock: %w", err)
	}
	return &listener{UnixListener: ul, path: path, made: fi}, nil
}

// checkParent refuses a directory that someone other than warden and
// root could change entries in.
func checkParent(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("unixsock: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("unixsock: %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("unixsock: %s: the file system reports no owner", dir)
	}
	me := os.Geteuid()
	if int(st.Uid) != me && st.Uid != 0 {
		return fmt.Errorf("unixsock: the socket's directory %s is owned by uid %d, neither warden's (uid %d) nor root: its owner could replace the socket; use a directory of warden's own (chown %d %s), or a path in a missing one (created 0700)",
			dir, st.Uid, me, me, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("unixsock: the socket's directory %s is writable by group or others (mode %#o) without the sticky bit: anyone with that access could replace the socket; chmod go-w %s, or use a path in a missing directory (created 0700)",
			dir, perm, dir)
	}
	return nil
}

// clearPath makes sure nothing is at path: a stale socket of ours is
// removed; anything else is an error and left alone. The parent has
// passed checkParent, so no one else can change path meanwhile.
func clearPath(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("unixsock: %w", err)
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("unixsock: %s exists and is not a socket (%v); refusing to replace it: remove it, or choose another path", path, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		uid := -1
		if ok {
			uid = int(st.Uid)
		}
		return fmt.Errorf("unixsock: %s is a socket owned by uid %d, not warden's (uid %d); refusing to remove it: stop what serves it, or choose another path", path, uid, os.Geteuid())
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("unixsock: %s is in use by another process", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unixsock: remove stale socket: %w", err)
	}
	return nil
}

// privateDir creates a 0700 directory with a short random name in dir:
// short, because a socket path in it must fit in sun_path.
func privateDir(dir string) (string, error) {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	for range 100 {
		b := make([]byte, 5)
		if _, err := rand.Read(b); err != nil {
			return "", fmt.Errorf("unixsock: %w", err)
		}
		for i := range b {
			b[i] = letters[int(b[i])%len(letters)]
		}
		p := filepath.Join(dir, "."+string(b))
		err := os.Mkdir(p, 0o700)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("unixsock: %w", err)
		}
	}
	return "", fmt.Errorf("unixsock: no free temporary name in %s", dir)
}

// listener is a socket Listen made: Addr is its path, and Close removes
// the path while it is still this socket.
type listener struct {
	*net.UnixListener
	path string
	made fs.FileInfo
	once sync.Once
}

func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, lerr := os.Lstat(l.path); lerr == nil && os.SameFile(fi, l.made) {
			_ = os.Remove(l.path)
		}
	})
	return err
}
