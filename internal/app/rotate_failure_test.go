package app_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRotateStepFailureIsReported: a rotation step that fails on the
// server (here prepare, a file in the way of the rotation's directory)
// fails 'warden ca rotate' with the cause; --status shows it; the
// server's log says it once, not at every retry; once the cause is gone
// the server's retry goes through and --status is clean.
func TestRotateStepFailureIsReported(t *testing.T) {
	data, logs := startRotatable(t)
	blocker := filepath.Join(data, "rotation")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "ca", "rotate", "--data-dir", data, "prepare")
	if code != 1 || !strings.Contains(errOut, "not a directory") || !strings.Contains(errOut, "prepare") {
		t.Fatalf("ca rotate prepare that failed on the server: exit %d\n%s%s", code, out, errOut)
	}
	st := rotate(t, data, "--status")
	if !strings.Contains(st, "error: ") || !strings.Contains(st, "not a directory") {
		t.Fatalf("--status does not show the failing step:\n%s", st)
	}
	time.Sleep(3 * time.Second) // three retries
	if n := strings.Count(logs.String(), "level=ERROR msg=\"root rotation"); n != 1 {
		t.Fatalf("the failing step was logged %d times in 3 s, want once:\n%s", n, logs.String())
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(t, data, 10*time.Second, "the retry to prepare", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "prepared" })
	if strings.Contains(st, "error: ") {
		t.Fatalf("--status still shows an error after the step went through:\n%s", st)
	}
}
