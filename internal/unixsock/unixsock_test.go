package unixsock_test

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/wardenmesh/warden/internal/unixsock"
)

var listen = unixsock.Listen

// privateDir is a 0700 directory of the test's own.
func privateDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

// chownTo gives path to uid (the tests run as root, as CI does).
func chownTo(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Lchown(path, uid, -1); err != nil {
		t.Fatalf("chown %s to uid %d: %v (this test needs root, or CAP_CHOWN)", path, uid, err)
	}
}

// inotifyNames watches dir and returns a function that stops watching
// and lists the events seen for name: "create" and "attrib" (a chmod).
func inotifyNames(t *testing.T, dir, name string) func() []string {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_CREATE|syscall.IN_ATTRIB); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		defer syscall.Close(fd)
		var seen []string
		buf := make([]byte, 64*1024)
		for {
			n, err := syscall.Read(fd, buf)
			if n <= 0 || err != nil {
				return seen
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				raw := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
				if string(bytes.TrimRight(raw, "\x00")) == name {
					switch {
					case ev.Mask&syscall.IN_CREATE != 0:
						seen = append(seen, "create")
					case ev.Mask&syscall.IN_ATTRIB != 0:
						seen = append(seen, "attrib")
					}
				}
				off += syscall.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// TestSocketHasItsModeFromTheStart: the socket appears at its path with
// its final mode, under a loose umask too: no chmod ever happens at the
// path (it would be a window with the umask's mode, and would follow a
// symlink planted there).
func TestSocketHasItsModeFromTheStart(t *testing.T) {
	old := syscall.Umask(0) // the loosest: a bound socket would be 0777
	defer syscall.Umask(old)
	for _, mode := range []fs.FileMode{0o600, 0o660} {
		dir := privateDir(t)
		path := filepath.Join(dir, "sds.sock")
		events := inotifyNames(t, dir, "sds.sock")
		l, err := listen(path, mode)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != mode {
			t.Errorf("right after listen: %v %v, want a socket with mode %v", fi.Mode(), err, mode)
		}
		if got := events(); len(got) != 1 || got[0] != "create" {
			t.Errorf("mode %#o: events at the path %v, want one create and no chmod", mode, got)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		c.Close()
		l.Close()
	}
}

// TestSymlinkAtThePathRefused: a symlink at the path is refused, and
// neither it nor its target is touched.
func TestSymlinkAtThePathRefused(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	target := filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sds.sock")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	_, err := listen(path, 0o600)
	if err == nil || !strings.Contains(err.Error(), path+" exists and is not a socket") {
		t.Fatalf("listen on a symlink: %v", err)
	}
	fi, _ := os.Stat(target)
	b, _ := os.ReadFile(target)
	if fi.Mode().Perm() != 0o644 || string(b) != "keep" {
		t.Errorf("target changed: %v %q", fi.Mode(), b)
	}
	if l, err := os.Readlink(path); err != nil || l != target {
		t.Errorf("symlink changed: %q %v", l, err)
	}
}

// TestExistingPaths: a regular file is refused, a live socket is in use,
// a stale socket of ours is replaced, a stale socket of another user's is
// refused and left.
func TestExistingPaths(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listen(file, 0o600); err == nil || !strings.Contains(err.Error(), file+" exists and is not a socket") {
		t.Errorf("a regular file: %v", err)
	}
	live := filepath.Join(dir, "live.sock")
	l, err := listen(live, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := listen(live, 0o600); err == nil || !strings.Contains(err.Error(), live+" is in use by another process") {
		t.Errorf("a live socket: %v", err)
	}
	stale := func(name string) string {
		p := filepath.Join(dir, name)
		s, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		s.(*net.UnixListener).SetUnlinkOnClose(false)
		s.Close()
		return p
	}
	mine := stale("mine.sock")
	l2, err := listen(mine, 0o600)
	if err != nil {
		t.Errorf("a stale socket of ours: %v", err)
	} else {
		l2.Close()
	}
	theirs := stale("theirs.sock")
	chownTo(t, theirs, os.Geteuid()+1000)
	if _, err := listen(theirs, 0o600); err == nil || !strings.Contains(err.Error(), "owned by uid") {
		t.Errorf("a stale socket of another user: %v", err)
	}
	if fi, err := os.Lstat(theirs); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Errorf("another user's socket was removed: %v", err)
	}
}

// TestParents: missing parents are created 0700 (0710 when the group is
// to reach the socket); a parent others may write without the sticky
// bit, or owned by another user, is refused; a sticky one (/tmp) is fine.
func TestParents(t *testing.T) {
	t.Parallel()
	base := privateDir(t)
	path := filepath.Join(base, "a", "b", "sds.sock")
	l, err := listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want 0700", d, fi.Mode(), err)
		}
	}
	l, err = listen(filepath.Join(base, "g", "sds.sock"), 0o660)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if fi, err := os.Stat(filepath.Join(base, "g")); err != nil || fi.Mode().Perm() != 0o710 {
		t.Errorf("parent of a group socket: %v %v, want 0710", fi.Mode(), err)
	}

	for _, c := range []struct {
		mode fs.FileMode
		uid  int
		want string // "" accepted
	}{
		{0o777, -1, "is writable by group or others (mode 0777) without the sticky bit"},
		{0o770, -1, "is writable by group or others (mode 0770) without the sticky bit"},
		{0o777 | fs.ModeSticky, -1, ""},
		{0o755, -1, ""},
		{0o700, os.Geteuid() + 1000, "is owned by uid"},
	} {
		d := privateDir(t)
		if err := os.Chmod(d, c.mode); err != nil {
			t.Fatal(err)
		}
		if c.uid >= 0 {
			chownTo(t, d, c.uid)
		}
		p := filepath.Join(d, "sds.sock")
		l, err := listen(p, 0o600)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("parent %v: %v", c.mode, err)
		case c.want == "":
			l.Close()
		case err == nil || !strings.Contains(err.Error(), c.want):
			if err == nil {
				l.Close()
			}
			t.Errorf("parent %v uid %d: %v, want %q", c.mode, c.uid, err, c.want)
		default:
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("parent %v: a socket was created", c.mode)
			}
		}
	}
}

// TestCloseRemovesOnlyItsOwnSocket: closing removes the socket; a socket
// another listener put at the path since is left alone.
func TestCloseRemovesOnlyItsOwnSocket(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	path := filepath.Join(dir, "sds.sock")
	l, err := listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().String() != path {
		t.Errorf("Addr %s, want %s", l.Addr(), path)
	}
	l.Close()
	if _, err := os.Lstat(path); err == nil {
		t.Fatal("the socket outlived Close")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left in the directory: %v", entries)
	}
	first, err := listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	second, err := listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	first.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSocket == 0 {
		t.Errorf("closing the first listener removed the second's socket: %v", err)
	}
}
