package gctune_test

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/gctune"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, gctune.MaxPercent},
		{1 << 20, gctune.MaxPercent}, // 1 MiB: capped
		{8 << 20, 400},               // 8 MiB: 32 MiB between collections
		{16 << 20, 200},              //
		{32 << 20, 100},              // from here Go's default
		{1 << 30, 100},               //
		{(32 << 20) / 3, 300},        // rounds down
		{gctune.Headroom / gctune.MaxPercent, gctune.MaxPercent},
	} {
		if got := gctune.Percent(c.live); got != c.want {
			t.Errorf("Percent(%d) = %d, want %d", c.live, got, c.want)
		}
	}
}

// TestStartAndRestore: two servers in one process share the pacing; GOGC
// is restored once the last stops, not before.
func TestStartAndRestore(t *testing.T) {
	t.Setenv("GOGC", "") // t.Setenv restores it; Start must see it unset
	unsetenv(t)
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	gctune.Start(ctxA)
	gctune.Start(ctxB)
	if p := current(); p <= 100 {
		t.Fatalf("GOGC %d with a small live heap, want more than 100", p)
	}
	stopA()
	time.Sleep(100 * time.Millisecond)
	if p := current(); p <= 100 {
		t.Fatalf("GOGC %d after one of two stopped, want still raised", p)
	}
	stopB()
	deadline := time.Now().Add(5 * time.Second)
	for current() != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC %d after both stopped, want 100 again", current())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGOGCFromEnvironmentWins: an operator's GOGC is left alone.
func TestGOGCFromEnvironmentWins(t *testing.T) {
	t.Setenv("GOGC", "50")
	old := debug.SetGCPercent(50)
	defer debug.SetGCPercent(old)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gctune.Start(ctx)
	if p := current(); p != 50 {
		t.Fatalf("GOGC %d, want the environment's 50", p)
	}
}

// current reads GOGC (runtime/metrics; setting it is the only other
// way to read it, which would race with the restore).
func current() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// unsetenv removes GOGC for the test (t.Setenv first, so that it is put
// back afterwards).
func unsetenv(t *testing.T) {
	t.Helper()
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
}
