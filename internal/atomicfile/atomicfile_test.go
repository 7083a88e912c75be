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
