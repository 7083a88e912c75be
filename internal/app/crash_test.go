package app_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"

	"github.com/wardenmesh/warden/internal/app"
)

// crashChildEnv makes the test binary run 'warden serve' (its arguments
// in the variable, separated by \x1f) instead of the tests: the process
// the crash test kills.
const crashChildEnv = "WARDEN_CRASH_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(crashChildEnv); args != "" {
		os.Exit(app.Run(context.Background(), strings.Split(args, "\x1f"), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestKillDuringFirstStart: warden serve is killed (SIGKILL) at random
// moments of its first start, then started again. Every time the store
// ends complete — either the one the killed process finished, unchanged,
// or a new one made cleanly — never partial, with no temporary file (which
// could hold key material) left behind.
func TestKillDuringFirstStart(t *testing.T) {
	runs := 40
	if testing.Short() {
		runs = 10
	}
	var seen [3]int // killed with no store, with part of one, with a whole one
	defer func() {
		t.Logf("%d runs: killed before the store %d, during it %d, after it %d", runs, seen[0], seen[1], seen[2])
	}()
	for i := 0; i < runs; i++ {
		data := filepath.Join(t.TempDir(), "data")
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), crashChildEnv+"="+strings.Join([]string{"serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", ""}, "\x1f"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Aim at the store's creation: wait for the data directory to
		// appear (warden makes it just before), then a random moment.
		deadline := time.Now().Add(10 * time.Second)
		for !fileExists(data) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Microsecond)
		}
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		before, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
		complete := len(before) > 0 && fileExists(filepath.Join(data, "ca-key.pem")) && !fileExists(filepath.Join(data, ".creating"))
		switch {
		case complete:
			seen[2]++
		case fileExists(filepath.Join(data, ".creating")) || len(before) > 0:
			seen[1]++
		default:
			seen[0]++
		}

		_, stop := serve(t, data)
		if code := stop(); code != 0 {
			t.Fatalf("run %d: restart exited %d", i, code)
		}
		after, err := os.ReadFile(filepath.Join(data, "root-cert.pem"))
		if err != nil {
			t.Fatalf("run %d: no store after the restart: %v", i, err)
		}
		if complete && !bytes.Equal(before, after) {
			t.Fatalf("run %d: a complete store was replaced", i)
		}
		leftovers, _ := filepath.Glob(filepath.Join(data, ".*.tmp-*"))
		if len(leftovers) > 0 || fileExists(filepath.Join(data, ".creating")) {
			t.Fatalf("run %d: leftovers %v", i, leftovers)
		}
		for _, n := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "token-key.pem", "store-identity.json"} {
			fi, err := os.Stat(filepath.Join(data, n))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("run %d: %s: %v %v", i, n, err, fi)
			}
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestStopBeforeServing: a stop that comes before the servers start (a
// SIGTERM during the first start) is a clean exit, status 0, not
// gRPC's "the server has been stopped" as a failure.
func TestStopBeforeServing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	data := filepath.Join(t.TempDir(), "data")
	if code := app.Run(ctx, []string{"serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", ""}, &out, &out); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out.String())
	}
	if !fileExists(filepath.Join(data, "root-cert.pem")) {
		t.Fatalf("no store made:\n%s", out.String())
	}
}
