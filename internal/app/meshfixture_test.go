package app_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// meshFixture is warden serve on a copy of docs/examples/flaskapp (the
// app port replaced by a free one), with certificates for workloads.
type meshFixture struct {
	dir, data, mesh, addr, port string
	certs                       map[string]string // "ns/sa" -> cert directory
}

// startMesh copies the example files (all of them, or those named), adds
// extra files (name -> content), serves them, and gets certificates for
// the identities ("ns/sa").
func startMesh(t *testing.T, files []string, extra map[string]string, idents ...string) *meshFixture {
	t.Helper()
	return startMeshWith(t, files, extra, nil, idents...)
}

// startMeshWith is startMesh with more flags for warden serve.
func startMeshWith(t *testing.T, files []string, extra map[string]string, serveFlags []string, idents ...string) *meshFixture {
	t.Helper()
	m := &meshFixture{dir: t.TempDir(), certs: map[string]string{}}
	m.data, m.mesh = filepath.Join(m.dir, "data"), filepath.Join(m.dir, "mesh")
	_, m.port, _ = net.SplitHostPort(testkit.FreeAddr(t))
	os.MkdirAll(m.mesh, 0o755)
	if files == nil {
		paths, _ := filepath.Glob("../../docs/examples/flaskapp/*.yaml")
		for _, p := range paths {
			files = append(files, filepath.Base(p))
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("../../docs/examples/flaskapp", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(m.mesh, f), bytes.ReplaceAll(b, []byte("8080"), []byte(m.port)), 0o644)
	}
	for name, content := range extra {
		os.WriteFile(filepath.Join(m.mesh, name), []byte(content), 0o644)
	}
	m.addr, _ = serve(t, m.data, append([]string{"--config-dir", m.mesh, "--push-debounce", "20ms"}, serveFlags...)...)
	for _, id := range idents {
		ns, sa, _ := strings.Cut(id, "/")
		code, tok, stderr := run(t, "token", "--data-dir", m.data, "--ns", ns, "--sa", sa)
		if code != 0 {
			t.Fatalf("token %s: %s", id, stderr)
		}
		tf := filepath.Join(m.dir, ns+"-"+sa+".token")
		os.WriteFile(tf, []byte(tok), 0o600)
		m.certs[id] = filepath.Join(m.dir, "certs-"+ns+"-"+sa)
		if code, _, stderr := run(t, "cert", "request", "--ca", m.addr, "--data-dir", m.data, "--token-file", tf, "--out", m.certs[id]); code != 0 {
			t.Fatalf("cert request %s: %s", id, stderr)
		}
	}
	return m
}

// demoServer runs 'warden demo server' with args until ctx is done, and
// returns once it serves (its listener came from xDS): a client started
// earlier could wait out gRPC's reconnect backoff on its first calls.
func demoServer(t *testing.T, ctx context.Context, wg *sync.WaitGroup, args ...string) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		app.Run(ctx, append([]string{"demo", "server"}, args...), out, out)
	}()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "serving mode SERVING"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("demo server %v never served:\n%s", args, out.String())
		}
	}
	return out
}
