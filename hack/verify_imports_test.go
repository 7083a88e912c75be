package hack_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyImportsCatchesABadImport: the import rule is enforced, not
// assumed. A file importing gRPC, client-go or Vault is overlaid (go
// list's -overlay; the tree is not touched) into each pure package in
// turn, and hack/verify-imports.sh must fail naming that package.
func TestVerifyImportsCatchesABadImport(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "hack", "verify-imports.sh")
	if out, err := exec.Command(script).CombinedOutput(); err != nil {
		t.Fatalf("verify-imports fails on the tree as it is: %v\n%s", err, out)
	}
	cases := []struct{ pkg, name, imp string }{
		{"sds", "sds", "google.golang.org/grpc"},
		{"api", "api", "k8s.io/client-go/kubernetes"},
		{"token", "token", "github.com/hashicorp/vault/api"},
		{"rbac", "rbac", "google.golang.org/grpc"},
		{"authn", "authn", "k8s.io/client-go/kubernetes"},
		{"ca", "ca", "google.golang.org/grpc"},
		{"xds", "xds", "google.golang.org/grpc"},
	}
	for _, c := range cases {
		t.Run(c.pkg, func(t *testing.T) {
			dir := t.TempDir()
			bad := filepath.Join(dir, "bad.go")
			os.WriteFile(bad, []byte("package "+c.name+"\n\nimport _ \""+c.imp+"\"\n"), 0o644)
			overlay, _ := json.Marshal(map[string]any{"Replace": map[string]string{filepath.Join(root, c.pkg, "zz_bad_import.go"): bad}})
			ov := filepath.Join(dir, "overlay.json")
			os.WriteFile(ov, overlay, 0o644)
			cmd := exec.Command(script)
			cmd.Env = append(os.Environ(), "GOFLAGS=-overlay="+ov)
			out, err := cmd.CombinedOutput()
			want := "verify-imports: github.com/wardenmesh/warden/" + c.pkg + " depends on forbidden packages"
			if err == nil || !strings.Contains(string(out), want) {
				t.Fatalf("with %s importing %s: %v\n%s\nwant a failure containing %q", c.pkg, c.imp, err, out, want)
			}
		})
	}
}
