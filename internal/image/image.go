// Package image builds warden's OCI image without a container daemon:
// one layer on an empty base holding the static binary, a passwd entry
// for an unprivileged user and nothing else (no shell, no package
// manager), the entrypoint warden, the user 65532. hack/image (make image)
// drives it; the tests push the image to a registry and run the binary
// they pull back.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// Paths in the image.
const (
	BinaryPath = "/usr/local/bin/warden"
	User       = "65532:65532"
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
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch})
	}
	file := func(name string, mode int64, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []string{"etc/", "usr/", "usr/local/", "usr/local/bin/", "tmp/"} {
		if err := dir(d); err != nil {
			return nil, err
		}
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
	cf.Config.WorkingDir = "/tmp"
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
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
