// Package image builds warden's OCI image without a container daemon:
// one layer on an empty base holding the static binary, a passwd entry
// for an unprivileged user, the data directory that user owns and
// nothing else (no shell, no package manager), the entrypoint warden, the
// user 65532. hack/image (make image) drives it; the tests push the image
// to a registry and run the binary they pull back, and run the image's
// default command as its user in its unpacked root file system.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// Paths and the user of the image.
const (
	BinaryPath = "/usr/local/bin/warden"
	User       = "65532:65532"
	// DataDir is serve's standalone data directory (WARDEN_DATA_DIR, and
	// the working directory), owned by User with mode 0700 and declared a
	// volume: mount one there to keep the CA and the token key across
	// container restarts. Kubernetes mode keeps them in Secrets and
	// writes nothing here.
	DataDir = "/var/lib/warden"
	uid     = 65532
)

// Build makes the image from a static linux binary, labelled with version.
// The layer's files carry a fixed time, so the same binary gives the same
// digest.
func Build(binary string, version, arch string) (v1.Image, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	dir := func(name string, mode int64, owner int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: owner, Gid: owner, ModTime: epoch})
	}
	file := func(name string, mode int64, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []string{"etc/", "usr/", "usr/local/", "usr/local/bin/", "var/", "var/lib/"} {
		if err := dir(d, 0o755, 0); err != nil {
			return nil, err
		}
	}
	// /tmp as every system has it (world-writable, sticky); the data
	// directory the user's alone.
	if err := dir("tmp/", 0o1777, 0); err != nil {
		return nil, err
	}
	if err := dir(DataDir[1:]+"/", 0o700, uid); err != nil {
		return nil, err
	}
	// No shell: the user's shell is a path that does not exist.
	if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")); err != nil {
		return nil, err
	}
	if err := file("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\n")); err != nil {
		return nil, err
	}
	if err := file(BinaryPath[1:], 0o755, bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = arch, "linux", v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{BinaryPath}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.User = User
	cf.Config.WorkingDir = DataDir
	cf.Config.Env = []string{"PATH=/usr/local/bin", "WARDEN_DATA_DIR=" + DataDir}
	cf.Config.Volumes = map[string]struct{}{DataDir: {}}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "warden",
		"org.opencontainers.image.version": version,
		"org.opencontainers.image.source":  "https://github.com/wardenmesh/warden",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	return img, nil
}

// WriteLayout writes img as an OCI image layout in dir (replacing what is
// there) and makes its files readable by everyone, 0644 (directories
// 0755): go-containerregistry writes a layer blob through a temporary
// file, 0600, which another user's OCI tool (or a registry's uploader
// run as another user) cannot read.
func WriteLayout(dir string, img v1.Image) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("image: layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img); err != nil {
		return fmt.Errorf("image: layout %s: %w", dir, err)
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	})
}

// Binary extracts the warden binary from an image's layers (a pulled
// image, to run what the registry holds).
func Binary(img v1.Image) ([]byte, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("image: no %s in the layers", BinaryPath)
		}
		if err != nil {
			return nil, err
		}
		if "/"+h.Name == BinaryPath {
			return io.ReadAll(tr)
		}
	}
}

// Files lists the paths in an image's layers.
func Files(img v1.Image) ([]string, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, "/"+h.Name)
	}
}

// WriteKustomization sets the warden image of a kustomization file to
// repo@digest (kustomize's images: name warden, newName, digest), keeping
// the rest of the file.
func WriteKustomization(path, repo, digest string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var k map[string]any
	if err := yaml.Unmarshal(b, &k); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	k["images"] = []map[string]string{{"name": "warden", "newName": repo, "digest": digest}}
	out, err := yaml.Marshal(k)
	if err != nil {
		return err
	}
	head := "# images: written by make image (hack/image): the image by digest.\n"
	return os.WriteFile(path, append([]byte(head), out...), 0o644)
}
