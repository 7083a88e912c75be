package app_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"
)

// serveProcess runs 'warden serve' in a child process (so that its memory
// and CPU are its own) and waits until it is ready.
func serveProcess(t *testing.T, data string, extra ...string) (addr, httpAddr string) {
	t.Helper()
	addr, httpAddr = testkit.FreeAddr(t), testkit.FreeAddr(t)
	args := append([]string{"serve", "--data-dir", data, "--listen", addr, "--http-listen", httpAddr}, extra...)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), crashChildEnv+"="+strings.Join(args, "\x1f"))
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("warden serve:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, httpAddr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("warden serve not ready:\n%s", logs.String())
		}
	}
}

var (
	attackRow  = regexp.MustCompile(`(?m)^(before|during|after)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\d+)\s+([\d.]+) MiB\s+([\d.]+) MiB`)
	heapLine   = regexp.MustCompile(`(?m)^server heap in use: ([\d.]+) MiB idle, ([\d.]+) MiB at the peak, ([\d.]+) MiB after the hostile clients left`)
	hostileRow = regexp.MustCompile(`(?m)^hostile: oversized headers: (\d+) sent \(\d+ MiB\), (\d+) refused; stalled streams: (\d+) held, (\d+) refused; idle connections: (\d+) held`)
)

func atof(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }

// TestHonestCallersUnderHostileLoad runs 'warden bench ca --hostile'
// against a 'warden serve' process: honest callers measured alone, then
// beside hostile clients (never-ending 2 MiB headers, stalled streams,
// idle, half-open and garbage connections from four other addresses),
// then after those left. Every honest request must succeed, the server's
// heap must stay under 256 MiB, and after the attack it must come back to
// within 16 MiB of where it was before. Throughput and latency are
// logged, not asserted.
func TestHonestCallersUnderHostileLoad(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	addr, httpAddr := serveProcess(t, data)
	code, stdout, stderr := run(t, "bench", "ca", "--addr", addr, "--data-dir", data,
		"--server-metrics", "http://"+httpAddr+"/metrics", "--hostile",
		"--duration", "2s", "--warmup", "200ms", "--settle", "1s", "--concurrency", "8",
		"--hostile-oversized", "20", "--hostile-header-bytes", strconv.Itoa(2<<20), "--hostile-stalled", "300",
		"--hostile-idle", "300", "--hostile-half-open", "50", "--hostile-garbage", "5", "--hostile-sources", "4")
	t.Logf("warden bench ca --hostile:\n%s", stdout)
	if code != 0 {
		t.Fatalf("bench ca --hostile exited %d:\n%s", code, stderr)
	}
	rows := map[string][]string{}
	for _, m := range attackRow.FindAllStringSubmatch(stdout, -1) {
		rows[m[1]] = m
	}
	if len(rows) != 3 {
		t.Fatalf("want before, during and after rows in the output")
	}
	mib := func(row string) float64 { return atof(rows[row][7]) }
	for _, row := range []string{"before", "during", "after"} {
		if rows[row][3] != "0" {
			t.Errorf("%s: %s honest requests failed", row, rows[row][3])
		}
		if n, _ := strconv.Atoi(rows[row][2]); n == 0 {
			t.Errorf("%s: no honest certificate issued", row)
		}
	}
	if peak := mib("during"); peak > 256 {
		t.Errorf("the server's heap reached %.0f MiB beside the hostile clients; the bound is 256 MiB", peak)
	}
	// After: sampled at the end of the last honest run, once the
	// collector has had time to run.
	hl := heapLine.FindStringSubmatch(stdout)
	if hl == nil {
		t.Fatal("no heap line in the output")
	}
	if before, after := mib("before"), atof(hl[3]); after > before+16 {
		t.Errorf("the server's heap did not come back: %.1f MiB before the attack (peak), %.1f MiB after", before, after)
	}
	h := hostileRow.FindStringSubmatch(stdout)
	if h == nil {
		t.Fatal("no hostile report in the output")
	}
	sent, _ := strconv.Atoi(h[1])
	refused, _ := strconv.Atoi(h[2])
	stalled, _ := strconv.Atoi(h[3])
	idle, _ := strconv.Atoi(h[5])
	if sent == 0 || refused < sent-20 {
		t.Errorf("oversized headers: %d sent, %d refused", sent, refused)
	}
	// The server holds what is within the limits, and the test must have
	// put that load on it.
	if stalled != 300 || idle != 300 {
		t.Errorf("the hostile load did not connect: %d stalled streams, %d idle connections held", stalled, idle)
	}
}
