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

// TestCheckFlagsAreItsOwn: warden check offers the flags it reads and no
// serve-only one (--replica-id, --gateway-num-trusted-proxies), and takes
// the trust domain its --trust-domain-alias are aliases of, as serve does.
func TestCheckFlagsAreItsOwn(t *testing.T) {
	t.Parallel()
	_, _, help := run(t, "check", "-h")
	var got []string
	for _, l := range strings.Split(help, "\n") {
		if strings.HasPrefix(l, "  -") {
			got = append(got, strings.Fields(l)[0][1:])
		}
	}
	want := "config-dir context data-dir expiry-warning federation-file kubeconfig kubernetes namespace o path-normalization plugged-in-dir pod-certificate-pending pod-certificate-signer root-namespace sa-secrets server service-account stale-after trust-domain trust-domain-alias"
	if strings.Join(got, " ") != want {
		t.Errorf("check -h lists\n%s\nwant\n%s", strings.Join(got, " "), want)
	}

	data := filepath.Join(t.TempDir(), "data")
	root, _ := ca.NewSelfSigned(ca.CAOptions{Organization: "example.org"})
	f, _ := root.Encode()
	if err := (&filestore.Store{Dir: data}).Create(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "check", "--kubernetes=false", "--data-dir", data, "--config-dir", "../../docs/examples/flaskapp",
		"--trust-domain", "example.org", "--trust-domain-alias", "cluster.local")
	if code != 0 || !strings.HasSuffix(out, " 0 warnings, 0 errors\n") {
		t.Errorf("check --trust-domain example.org --trust-domain-alias cluster.local: exit %d\n%s%s", code, out, stderr)
	}
	code, _, stderr = run(t, "check", "--kubernetes=false", "--data-dir", data, "--trust-domain", "Example.org")
	if want := `warden check: usage: --trust-domain "Example.org": `; code != 2 || !strings.HasPrefix(stderr, want) {
		t.Errorf("check --trust-domain Example.org: exit %d %q, want 2 and %q", code, stderr, want)
	}
}
