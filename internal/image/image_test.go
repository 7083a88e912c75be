package image_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/wardenmesh/warden/internal/image"
)

// A registry in its own process: the test binary re-executed with
// WARDEN_TEST_REGISTRY set serves go-containerregistry's registry there.
func TestMain(m *testing.M) {
	if addr := os.Getenv("WARDEN_TEST_REGISTRY"); addr != "" {
		srv := &http.Server{Addr: addr, Handler: registry.New(), ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintln(os.Stderr, srv.ListenAndServe())
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func startRegistry(t *testing.T) string {
	t.Helper()
	addr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WARDEN_TEST_REGISTRY="+addr)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry did not start: %s", logs.String())
		}
	}
}

// buildWarden builds warden static, as make image does, into dir.
func buildWarden(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "warden")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X github.com/wardenmesh/warden/internal/app.Version=image-test", "-o", bin, "../../cmd/warden")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestImagePushPullRun: warden built static, packed as an OCI image,
// pushed to a registry process on loopback, pulled back by digest; the
// image runs as a non-root user, has no shell, and the binary taken from
// the pulled layers runs. The digest reference lands in a kustomization
// that kubectl renders into the Deployment.
func TestImagePushPullRun(t *testing.T) {
	dir := t.TempDir()
	bin := buildWarden(t, dir)
	img, err := image.Build(bin, "image-test", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := image.Build(bin, "image-test", runtime.GOARCH)
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Fatalf("the same binary gave two digests: %s, %s", d1, d2)
	}

	addr := startRegistry(t)
	repo, err := name.NewRepository(addr+"/warden", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ref := repo.Digest(d1.String())
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if d, _ := pulled.Digest(); d != d1 {
		t.Fatalf("pulled %s, pushed %s", d, d1)
	}
	cf, err := pulled.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != image.User || !slices.Equal(cf.Config.Entrypoint, []string{image.BinaryPath}) || cf.OS != "linux" {
		t.Fatalf("config: user %q, entrypoint %v, os %s", cf.Config.User, cf.Config.Entrypoint, cf.OS)
	}
	files, err := image.Files(pulled)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "/sh") || strings.HasPrefix(f, "/bin/") {
			t.Errorf("the image has %s", f)
		}
	}
	b, err := image.Binary(pulled)
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "pulled-warden")
	if err := os.WriteFile(run, b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(run, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "image-test") {
		t.Fatalf("the pulled binary: %v\n%s", err, out)
	}

	// make image --push writes the digest reference into deploy/warden.
	deploy := filepath.Join(dir, "deploy")
	if out, err := exec.Command("cp", "-r", "../../deploy/warden", deploy).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := image.WriteKustomization(filepath.Join(deploy, "kustomization.yaml"), repo.String(), d1.String()); err != nil {
		t.Fatal(err)
	}
	// The kubectl a user has: hack/kube-binaries.sh builds one when the
	// machine has none (make test exports its folder).
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		if kubectl, err = exec.LookPath("kubectl"); err != nil {
			t.Fatal("kubectl is required (hack/kube-binaries.sh builds it when the machine has none)")
		}
	}
	rendered, err := exec.Command(kubectl, "kustomize", deploy).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, rendered)
	}
	if want := "image: " + ref.String(); !strings.Contains(string(rendered), want) {
		t.Fatalf("the Deployment does not run %s:\n%s", want, rendered)
	}
}
