package app_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
)

// TestCheckProjectExamples: warden check finds nothing wrong with the
// project's own examples, beside a data directory as serve makes it:
// docs/examples (the seed story's objects, with the registry a
// standalone serve needs for them) and docs/examples/flaskapp (the
// README tour's mesh).
func TestCheckProjectExamples(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local"})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := root.Encode()
	if err := (&filestore.Store{Dir: data}).Create(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"../../docs/examples", "../../docs/examples/flaskapp"} {
		code, out, stderr := run(t, "check", "--kubernetes=false", "--data-dir", data, "--config-dir", dir)
		if code != 0 || strings.Contains(out, "ERROR") || strings.Contains(out, "WARNING") || !strings.HasSuffix(out, " 0 warnings, 0 errors\n") {
			t.Errorf("check --config-dir %s: exit %d, want 0 and no finding\n%s%s", dir, code, out, stderr)
		}
	}
}
