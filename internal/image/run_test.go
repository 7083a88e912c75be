package image_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/image"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestImageDefaultCommandRunsAsItsUser: the image make image writes (an
// OCI layout whose files everyone can read) runs its default command as
// a container runtime would — its layer unpacked as the root file system
// (chroot), its user 65532 (no supplementary groups), its environment and
// working directory — and serve comes up ready, its CA in the image's
// data directory, owned by that user. Only the listen addresses are added
// to the command (docker run IMAGE serve --listen ...), so that the test
// takes free ports. It needs root, as CI has: chroot and setuid.
func TestImageDefaultCommandRunsAsItsUser(t *testing.T) {
	dir := t.TempDir()
	built, err := image.Build(buildWarden(t, dir), "image-test", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(dir, "layout")
	if err := image.WriteLayout(lay, built); err != nil {
		t.Fatal(err)
	}
	blobs := 0
	if err := filepath.WalkDir(lay, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v, want 0644 (readable by every user's OCI tool)", path, fi.Mode().Perm())
		}
		if strings.Contains(path, "blobs") {
			blobs++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if blobs != 3 { // manifest, config, layer
		t.Fatalf("%d blobs in the layout, want 3", blobs)
	}
	img := layoutImage(t, lay)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if _, ok := c.Volumes[image.DataDir]; !ok || c.WorkingDir != image.DataDir || !slices.Contains(c.Env, "WARDEN_DATA_DIR="+image.DataDir) {
		t.Errorf("config: volumes %v, working directory %q, env %v: want the data directory %s as all three", c.Volumes, c.WorkingDir, c.Env, image.DataDir)
	}

	rootfs := filepath.Join(dir, "rootfs")
	unpack(t, img, rootfs)
	var uid, gid uint32
	if u, g, ok := strings.Cut(c.User, ":"); ok {
		a, err1 := strconv.ParseUint(u, 10, 32)
		b, err2 := strconv.ParseUint(g, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("user %q: %v", c.User, err)
		}
		uid, gid = uint32(a), uint32(b)
	} else {
		t.Fatalf("user %q is not uid:gid", c.User)
	}
	if uid == 0 {
		t.Fatal("the image runs as root")
	}
	httpAddr := testkit.FreeAddr(t)
	args := slices.Concat(c.Entrypoint[1:], c.Cmd, []string{"--listen", testkit.FreeAddr(t), "--http-listen", httpAddr})
	cmd := exec.Command(c.Entrypoint[0], args...) // a path in the image: exec'd after the chroot
	cmd.Env = c.Env
	cmd.Dir = c.WorkingDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs, Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("run %v as %d:%d in %s: %v (chroot and setuid need root)", cmd.Args, uid, gid, rootfs, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	ready := false
	for deadline := time.Now().Add(60 * time.Second); !ready && time.Now().Before(deadline); {
		select {
		case err := <-exited:
			t.Fatalf("the image's default command exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
		}
	}
	if !ready {
		t.Fatalf("serve was not ready within a minute:\n%s", logs.String())
	}
	// A container runtime's stop: SIGTERM, and a clean exit.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("serve stopped with %v:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop on SIGTERM:\n%s", logs.String())
	}
	// The CA is in the data directory, the user's own.
	for _, n := range []string{ca.FileRootCert, ca.FileCAKey} {
		fi, err := os.Stat(filepath.Join(rootfs, image.DataDir, n))
		if err != nil {
			t.Errorf("%s: %v\n%s", n, err, logs.String())
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d, want %d:%d", n, st.Uid, st.Gid, uid, gid)
		}
	}
}

// syncBuffer is the process's output, written by exec's copying
// goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// layoutImage reads the one image of an OCI layout back.
func layoutImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("%d images in the layout, want 1", len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// unpack writes img's file system under root as a container runtime
// does: each entry's mode, owner and group kept.
func unpack(t *testing.T, img v1.Image, root string) {
	t.Helper()
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Clean(h.Name)
		if !filepath.IsLocal(name) {
			t.Fatalf("layer entry %q leaves the root", h.Name)
		}
		path := filepath.Join(root, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.Mkdir(path, 0o700)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(path, b, 0o600)
			}
		default:
			err = fmt.Errorf("unexpected entry type %c", h.Typeflag)
		}
		if err == nil {
			err = os.Lchown(path, h.Uid, h.Gid)
		}
		if err == nil {
			err = os.Chmod(path, h.FileInfo().Mode()&(fs.ModePerm|fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid))
		}
		if err != nil {
			t.Fatalf("unpack %s: %v", h.Name, err)
		}
	}
}
