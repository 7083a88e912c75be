// Package testkit holds what warden's tests share: a log buffer safe for
// concurrent writers, a free loopback address, the golden-file comparison of the compilers'
// tests (refreshed with go test -update, reviewed as a diff), and the Istio
// oracle the differential tests run (IstioOracle, AskIstio).
package testkit

import (
	"bytes"
	"crypto/tls"
	"flag"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// Update is the -update flag: rewrite golden files instead of comparing.
var Update = flag.Bool("update", false, "rewrite golden files in testdata")

// Golden compares got with the file at path, or rewrites the file under
// -update. pkg names the package for the hint in the failure.
func Golden(t testing.TB, path string, got []byte, pkg string) {
	t.Helper()
	if *Update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test %s -update)", err, pkg)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs; review with go test %s -update && git diff\n--- got:\n%s", path, pkg, got)
	}
}

// Buffer is a bytes.Buffer safe for concurrent writers (loggers of
// servers under test) and readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// FreeAddr is a loopback address with a port free at the time of the
// call, for a server the test starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Serving reports whether a TLS server (warden's CA port) completes a
// handshake at addr, offering h2 as a gRPC client does. A TCP connect
// alone is not enough: serve binds its ports once early to fail fast and
// closes them, so a dial can land in that window before it serves.
func Serving(addr string) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{
		InsecureSkipVerify: true, // readiness only: nothing is sent
		NextProtos:         []string{"h2"},
	})
	if err != nil {
		return err
	}
	return c.Close()
}
