package source_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/source"
)

const pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestLoadAllEveryProblem: one read finds every invalid object of every
// file (not only the first file's first), each naming its file, document,
// object and field; the valid objects around them are kept. Load, serve
// --config-dir's loader, still refuses the directory, with all of them.
func TestLoadAllEveryProblem(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{
		"a.yaml": pa + "metadata: {name: good}\nspec: {}\n---\n" + pa + "metadata: {name: bad}\nspec: {mtls: {mode: STRICTEST}}\n",
		"b.yaml": "kind: [\n",
		"c.yaml": pa + "metadata: {name: good, namespace: default}\nspec: {}\n---\n" + pa + "metadata: {name: other}\nspec: {mtls: {mod: STRICT}}\n",
		"d.yaml": pa + "metadata: {name: fine}\nspec: {}\n",
	})
	l, err := source.LoadAll(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		filepath.Join(dir, "a.yaml") + `: api: document 2 (PeerAuthentication bad): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`,
		filepath.Join(dir, "b.yaml") + ": api: document 1: yaml: line 1: did not find expected node content",
		filepath.Join(dir, "c.yaml") + ": api: document 2 (PeerAuthentication other): spec.mtls.mod: unknown field",
		filepath.Join(dir, "c.yaml") + ": PeerAuthentication default/good is already defined in a.yaml",
	}
	var got, names []string
	for _, p := range l.Problems {
		got = append(got, p.Error())
	}
	for _, o := range l.Objects {
		names = append(names, o.Meta().Namespace+"/"+o.Meta().Name)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Join(names, ",") != "default/good,default/fine" || len(l.Files) != 4 {
		t.Fatalf("objects %v, files %v", names, l.Files)
	}
	objs, _, err := source.Load(dir)
	if err == nil || objs != nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("Load: %d objects, error:\n%v\nwant every problem:\n%s", len(objs), err, strings.Join(want, "\n"))
	}
}

// TestLoadAllEmptyAndMissing: a directory with no configuration file
// reads as no objects and no problem (serve may start empty); a path that
// does not exist is an error.
func TestLoadAllEmptyAndMissing(t *testing.T) {
	t.Parallel()
	dir := writeFiles(t, map[string]string{"README.md": "not configuration\n", ".hidden.yaml": "kind: [\n"})
	l, err := source.LoadAll(dir)
	if err != nil || len(l.Objects)+len(l.Problems)+len(l.Files) != 0 {
		t.Fatalf("empty directory: %+v, %v", l, err)
	}
	if _, err := source.LoadAll(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("missing path: %v", err)
	}
}
