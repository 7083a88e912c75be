// Command image builds warden's OCI image (internal/image) from a static
// binary without a container daemon, writes it as an OCI layout and, when
// given a repository, pushes it and writes the reference by digest into
// deploy/warden/image.yaml. make image runs it.
//
//	go run ./hack/image --binary bin/linux_amd64/warden --version v1 --layout bin/image [--push registry.example/warden] [--deploy deploy/warden]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/wardenmesh/warden/internal/image"
)

func main() {
	binary := flag.String("binary", "", "static linux warden binary (required)")
	version := flag.String("version", "dev", "version label")
	arch := flag.String("arch", runtime.GOARCH, "architecture of the binary")
	dir := flag.String("layout", "bin/image", "write the image here as an OCI layout")
	push := flag.String("push", "", "also push to this repository (e.g. registry.example/warden); plain HTTP for localhost registries")
	deploy := flag.String("deploy", "", "with --push: write the digest reference into DIR/kustomization.yaml's images")
	flag.Parse()
	if err := run(*binary, *version, *arch, *dir, *push, *deploy); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(binary, version, arch, dir, push, deploy string) error {
	if binary == "" {
		return fmt.Errorf("--binary is required")
	}
	img, err := image.Build(binary, version, arch)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if err := image.WriteLayout(dir, img); err != nil {
		return err
	}
	fmt.Printf("built %s (OCI layout in %s)\n", digest, dir)
	if push == "" {
		return nil
	}
	repo, err := name.NewRepository(push, name.Insecure)
	if err != nil {
		return err
	}
	ref := repo.Digest(digest.String())
	if err := remote.Write(ref, img); err != nil {
		return err
	}
	fmt.Printf("pushed %s\n", ref)
	if deploy == "" {
		return nil
	}
	return image.WriteKustomization(filepath.Join(deploy, "kustomization.yaml"), repo.String(), digest.String())
}
