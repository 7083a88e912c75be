package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/app"
)

// TestKubeconfigList: KUBECONFIG names several files, as kubectl merges
// them: the first holds only a context "unreachable" (an API server on a
// closed port) and no current context, the second the test cluster's
// admin with its current context. serve (--kubeconfig a:b), check and
// ca rotate (KUBECONFIG=a:b) work against the cluster; --context
// unreachable takes the first file's server, and says so; a list of
// files none of which exists is named.
func TestKubeconfigList(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	first := filepath.Join(dir, "first")
	os.WriteFile(first, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: unreachable
  cluster: {server: "https://%s", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {token: nothing}
contexts:
- name: unreachable
  context: {cluster: unreachable, user: nobody}
`, closed)), 0o600)
	list := first + string(filepath.ListSeparator) + apiserver.Kubeconfig

	_, logs, _ := startServeWith(t, ns, "replica-a", "--kubeconfig", list)
	waitBundle(t, ns)

	t.Setenv("KUBECONFIG", list)
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := app.Run(context.Background(), args, &out, &out)
		return code, out.String()
	}
	if code, out := run("check", "--kubernetes", "--namespace", ns); !strings.Contains(out, "ok      ca istio-ca-secret") || !strings.Contains(out, "ok      bundle") {
		t.Fatalf("check with KUBECONFIG=%s: exit %d\n%s\nserve:\n%s", list, code, out, logs.String())
	}
	if code, out := run("ca", "rotate", "--kubernetes", "--namespace", ns, "--status"); code != 0 || !strings.Contains(out, "phase: none") {
		t.Fatalf("ca rotate --status with KUBECONFIG=%s: exit %d\n%s", list, code, out)
	}
	code, out := run("ca", "rotate", "--kubernetes", "--namespace", ns, "--context", "unreachable", "--status")
	if code == 0 || !strings.Contains(out, closed) {
		t.Fatalf("ca rotate --context unreachable: exit %d, want a failure naming %s\n%s", code, closed, out)
	}
	code, out = run("check", "--kubernetes", "--namespace", ns, "--context", "nowhere")
	if want := `context "nowhere" does not exist`; code == 0 || !strings.Contains(out, want) {
		t.Fatalf("check --context nowhere: exit %d, want %q in\n%s", code, want, out)
	}
	missing := filepath.Join(dir, "a") + string(filepath.ListSeparator) + filepath.Join(dir, "b")
	code, out = run("check", "--kubernetes", "--namespace", ns, "--kubeconfig", missing)
	if want := "kube: config: no kubeconfig file exists among " + missing; code == 0 || !strings.Contains(out, want) {
		t.Fatalf("check --kubeconfig %s: exit %d, want %q in\n%s", missing, code, want, out)
	}
}
