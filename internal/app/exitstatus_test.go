package app_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/app"
)

// TestOutputToAFullDisk: a command whose output cannot be written (here
// to /dev/full, where every write fails with ENOSPC as on a full disk)
// exits 1 and names the cause, instead of exiting 0 with the token (or
// the CA's description) lost.
func TestOutputToAFullDisk(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	_, stop := serve(t, data)
	stop()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	for _, args := range [][]string{
		{"token", "--data-dir", data, "--ns", "default", "--sa", "sleep"},
		{"ca", "info", "--data-dir", data},
		{"cert", "inspect", filepath.Join(data, "root-cert.pem")},
		{"version"},
	} {
		// The same command with somewhere to write succeeds and writes.
		if code, out, errOut := run(t, args...); code != 0 || out == "" {
			t.Fatalf("%s: %d %q %s", strings.Join(args, " "), code, out, errOut)
		}
		var errOut bytes.Buffer
		code := app.Run(context.Background(), args, full, &errOut)
		if code != 1 || !strings.Contains(errOut.String(), "writing the output: write /dev/full: no space left on device") {
			t.Errorf("%s > /dev/full: exit %d, stderr %q; want 1 and the write error", strings.Join(args, " "), code, errOut.String())
		}
	}
}
