package atomicfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/wardenmesh/warden/internal/atomicfile"
)

func TestWriteNewRefusesExisting(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "k")
	if err := atomicfile.WriteNew(p, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteNew(p, []byte("two")); !errors.Is(err, os.ErrExist) {
		t.Fatalf("err = %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("content = %q, want the original", b)
	}
}

func TestWriteReplaceLeavesNoTemporaryFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "key.pem")
	for _, content := range []string{"one", "two"} {
		if err := atomicfile.WriteReplace(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the directory, want only key.pem", len(entries))
	}
	fi, _ := os.Stat(p)
	if b, _ := os.ReadFile(p); string(b) != "two" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%q %v", b, fi.Mode())
	}
}

// TestRemoveTemps: the temporary file a crash leaves between writeTemp
// and the rename is removed; the files beside it are not.
func TestRemoveTemps(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keep := []string{"ca-key.pem", ".creating", "notes.tmp-1"}
	for _, n := range append([]string{".ca-key.pem.tmp-123456"}, keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := atomicfile.RemoveTemps(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if len(got) != len(keep) || got[0] != ".creating" || got[1] != "ca-key.pem" || got[2] != "notes.tmp-1" {
		t.Fatalf("left %q, want %q", got, keep)
	}
}
