package doctest_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"
)

// root is the repository's root (this package is internal/doctest).
var root, _ = filepath.Abs(filepath.Join("..", ".."))

// blocks returns the shell blocks of a Markdown file whose fence is
// "```sh <tag>", in order.
func blocks(t *testing.T, file, tag string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sh "+tag:
			cur = &strings.Builder{}
		case cur != nil && strings.HasPrefix(line, "```"):
			out = append(out, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// build builds warden into dir/bin/warden, where the docs call it.
func build(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin", "warden")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/warden")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runScript runs script with bash (errexit, pipefail) in dir, with extra
// on PATH first, and returns its output; the test fails on a non-zero
// exit.
func runScript(t *testing.T, dir, script string, path ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+strings.Join(append(path, os.Getenv("PATH")), string(os.PathListSeparator)))
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n--- script\n%s--- output\n%s", err, script, out)
	}
	return string(out)
}

// TestREADMETour runs the README's tour as the script it is, in a fresh
// directory with the tree's binary at bin/warden and docs/ beside it, on
// free ports (the tour's own export line, changed as the README says to
// run it beside another warden); `make build` is the binary already
// built.
func TestREADMETour(t *testing.T) {
	tours := blocks(t, filepath.Join(root, "README.md"), "tour")
	if len(tours) != 1 {
		t.Fatalf("README.md has %d blocks tagged tour, want 1", len(tours))
	}
	dir := t.TempDir()
	build(t, dir)
	if err := os.Symlink(filepath.Join(root, "docs"), filepath.Join(dir, "docs")); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, "fake")
	if err := os.MkdirAll(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fake, "make"), []byte("#!/bin/sh\n[ \"$1\" = build ] && [ -x bin/warden ]\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := tours[0]
	for _, port := range []string{"127.0.0.1:15012", "127.0.0.1:15014"} {
		if !strings.Contains(script, "export WARDEN_ADDR=") || !strings.Contains(script, port) {
			t.Fatalf("the tour no longer exports WARDEN_ADDR and WARDEN_HTTP_ADDR with %s: update this test with the README", port)
		}
		script = strings.ReplaceAll(script, port, testkit.FreeAddr(t))
	}
	out := runScript(t, dir, script, fake)
	for _, want := range []string{
		"spiffe://cluster.local/ns/default/sa/sleep\nissued, valid until", // cert request
		"sleep/cert-chain.pem: OK",                                        // openssl verify
		"citadel_server_success_cert_issuance_count",                      // the metrics
		"ALLOW: allowed by ns[default]-policy[flaskapp-viewers]-rule[0]",  // policy explain
		"all proxies configured",                                          // bench xds
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the tour's output lacks %q\n%s", want, out)
		}
	}
}

// TestDocsRunnableBlocks runs every ```sh run block of docs/*.md from the
// repository's root, warden on PATH.
func TestDocsRunnableBlocks(t *testing.T) {
	bin := build(t, t.TempDir())
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, doc := range docs {
		for i, b := range blocks(t, doc, "run") {
			n++
			t.Run(filepath.Base(doc)+"#"+string(rune('0'+i)), func(t *testing.T) {
				runScript(t, root, b, filepath.Dir(bin))
			})
		}
	}
	if n == 0 {
		t.Fatal("no block of docs/ is tagged run")
	}
}
