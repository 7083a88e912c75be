package filestore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
)

func newFiles(t *testing.T) ca.Files {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCreateLoadPermissions(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	s := &filestore.Store{Dir: dir}
	ctx := context.Background()
	if _, err := s.Load(ctx); !errors.Is(err, ca.ErrNotFound) {
		t.Fatalf("Load on a missing dir = %v, want ErrNotFound", err)
	}
	f := newFiles(t)
	if err := s.Create(ctx, f); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode = %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 5 {
		t.Fatalf("%d entries in the store, want the 4 CA files and .lock (no temporaries left)", len(entries))
	}
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.CAKey, f.CAKey) || !bytes.Equal(got.RootCert, f.RootCert) {
		t.Fatal("loaded files differ from the created ones")
	}
}

func TestCreateNeverOverwrites(t *testing.T) {
	t.Parallel()
	s := &filestore.Store{Dir: privateDir(t)}
	ctx := context.Background()
	first := newFiles(t)
	if err := s.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	err := s.Create(ctx, newFiles(t))
	if !errors.Is(err, ca.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	got, _ := s.Load(ctx)
	if !bytes.Equal(got.CAKey, first.CAKey) {
		t.Fatal("the existing key was overwritten")
	}
}

func TestConcurrentCreateOneWins(t *testing.T) {
	t.Parallel()
	s := &filestore.Store{Dir: privateDir(t)}
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var roots [][]byte
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, _, err := ca.LoadOrCreate(ctx, s, nil, func() (*ca.Material, error) { return ca.NewSelfSigned(ca.CAOptions{}) })
			if err != nil {
				t.Error(err) // the lock keeps losers from seeing a half-written store
				return
			}
			mu.Lock()
			roots = append(roots, m.Roots[0].Raw)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, r := range roots {
		if !bytes.Equal(r, roots[0]) {
			t.Fatal("concurrent starts ended with different roots")
		}
	}
	if m, _, err := ca.LoadOrCreate(ctx, s, nil, nil); err != nil || !bytes.Equal(m.Roots[0].Raw, roots[0]) {
		t.Fatalf("reload after the race: %v", err)
	}
}

func TestPartialStoreIsAnError(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	s := &filestore.Store{Dir: dir}
	if err := s.Create(context.Background(), newFiles(t)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, ca.FileCAKey)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load(context.Background())
	want := "filestore: partial CA store in " + dir + ": missing ca-key.pem; refusing to generate a new root over it"
	if err == nil || errors.Is(err, ca.ErrNotFound) || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %v\nwant prefix %q", err, want)
	}
}

func TestLooseKeyPermissionsRefused(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	s := &filestore.Store{Dir: dir}
	if err := s.Create(context.Background(), newFiles(t)); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, ca.FileCAKey)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Load(context.Background())
	want := "filestore: " + key + " has mode 0644; it must not be accessible to group or others (chmod 600 " + key + ")"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %q", err, want)
	}
}

// privateDir is a 0700 directory, as a data directory must be.
func privateDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestLooseDirectoryRefused: a data directory group or others may write,
// or read, is refused with the fix in the message; nothing is written.
func TestLooseDirectoryRefused(t *testing.T) {
	t.Parallel()
	for mode, want := range map[os.FileMode]string{
		0o777: "is writable by group or others (mode 0777): anyone with that access could replace the CA; chmod 700 ",
		0o770: "is writable by group or others (mode 0770)",
		0o755: "is readable by group or others (mode 0755) and holds private keys; chmod 700 ",
	} {
		dir := privateDir(t)
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		s := &filestore.Store{Dir: dir}
		_, _, err := ca.LoadOrCreate(context.Background(), s, ca.SystemClock{}, func() (*ca.Material, error) { return ca.NewSelfSigned(ca.CAOptions{}) })
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("mode %#o: %v\nwant %q", mode, err, want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("mode %#o: %d files written", mode, len(entries))
		}
	}
}

// TestUnfinishedCreationIsCleanedUp: a store whose creation was
// interrupted (the sentinel is still there) is removed and created anew;
// temporary files, which may hold a key, never survive a Load; a partial
// store without the sentinel is someone's damaged store and stays an error.
func TestUnfinishedCreationIsCleanedUp(t *testing.T) {
	t.Parallel()
	dir := privateDir(t)
	for n, b := range map[string]string{".creating": "", "root-cert.pem": "x", "cert-chain.pem": "x", ".ca-key.pem.tmp-123": "KEY MATERIAL"} {
		os.WriteFile(filepath.Join(dir, n), []byte(b), 0o600)
	}
	s := &filestore.Store{Dir: dir}
	if _, err := s.Load(context.Background()); !errors.Is(err, ca.ErrNotFound) {
		t.Fatalf("Load after an interrupted creation: %v, want ErrNotFound", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 || entries[0].Name() != ".lock" {
		t.Fatalf("left behind: %v", entries)
	}
	if hidden, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(hidden) != 0 || fileIn(dir, ".creating") {
		t.Fatalf("left behind: %v", hidden)
	}
	os.WriteFile(filepath.Join(dir, "root-cert.pem"), []byte("x"), 0o600)
	if _, err := s.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "partial CA store") {
		t.Fatalf("a partial store without the sentinel: %v", err)
	}
}

func fileIn(dir, name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }

// chownTo gives path to uid (the tests run as root, as CI does; chown
// needs it).
func chownTo(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Lchown(path, uid, -1); err != nil {
		t.Fatalf("chown %s to uid %d: %v (this test needs root, or CAP_CHOWN)", path, uid, err)
	}
}

// TestForeignOwnerRefused: a data directory, or a key file in it, owned
// by a user other than the one warden runs as is refused with the path,
// both uids and the fix, whatever its mode; nothing is written into a
// foreign directory; owned back, the store loads.
func TestForeignOwnerRefused(t *testing.T) {
	t.Parallel()
	me := os.Geteuid()
	other := me + 1000
	dir := privateDir(t)
	s := &filestore.Store{Dir: dir}
	if err := s.Create(context.Background(), newFiles(t)); err != nil {
		t.Fatal(err)
	}
	chownTo(t, dir, other)
	_, err := s.Load(context.Background())
	want := fmt.Sprintf("filestore: data directory %s is owned by uid %d, but warden runs as uid %d: its owner could replace what warden keeps there; chown -R %d %s (or run warden as uid %d)", dir, other, me, me, dir, other)
	if err == nil || err.Error() != want {
		t.Errorf("foreign directory: %v\nwant %q", err, want)
	}
	chownTo(t, dir, me)
	key := filepath.Join(dir, ca.FileCAKey)
	chownTo(t, key, other)
	_, err = s.Load(context.Background())
	want = fmt.Sprintf("filestore: %s is owned by uid %d, but warden runs as uid %d: its owner could replace what warden keeps there; chown %d %s (or run warden as uid %d)", key, other, me, me, key, other)
	if err == nil || err.Error() != want {
		t.Errorf("foreign key file: %v\nwant %q", err, want)
	}
	chownTo(t, key, me)
	if _, err := s.Load(context.Background()); err != nil {
		t.Errorf("owned back: %v", err)
	}

	empty := privateDir(t)
	chownTo(t, empty, other)
	_, _, err = ca.LoadOrCreate(context.Background(), &filestore.Store{Dir: empty}, ca.SystemClock{}, func() (*ca.Material, error) { return ca.NewSelfSigned(ca.CAOptions{}) })
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("is owned by uid %d, but warden runs as uid %d", other, me)) {
		t.Errorf("foreign empty directory: %v", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("%d files written into a foreign directory", len(entries))
	}
}
