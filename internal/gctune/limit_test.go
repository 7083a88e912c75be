package gctune

import (
	"context"
	"errors"
	"math"
	"os"
	"runtime/debug"
	"testing"
	"time"
)

// TestContainerLimit: the cgroup v2 and v1 files as a container sees
// them; no limit when they say "max", v1's "unlimited", or nothing.
func TestContainerLimit(t *testing.T) {
	defer func() { readFile = os.ReadFile }()
	for _, c := range []struct {
		files map[string]string
		limit uint64
		ok    bool
	}{
		{map[string]string{"/sys/fs/cgroup/memory.max": "134217728\n"}, 128 << 20, true},
		{map[string]string{"/sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		{map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "268435456\n"}, 256 << 20, true},
		{map[string]string{"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		{map[string]string{"/sys/fs/cgroup/memory.max": "garbage"}, 0, false},
		{map[string]string{}, 0, false},
	} {
		readFile = func(p string) ([]byte, error) {
			if v, ok := c.files[p]; ok {
				return []byte(v), nil
			}
			return nil, errors.New("no such file")
		}
		if limit, ok := containerLimit(); limit != c.limit || ok != c.ok {
			t.Errorf("%v: %d %t, want %d %t", c.files, limit, ok, c.limit, c.ok)
		}
	}
}

// TestStartSetsSoftLimit: under a 256 MiB container limit the collector
// gets a 230.4 MiB soft limit while paced, and the previous one back.
func TestStartSetsSoftLimit(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	defer func() { readFile = os.ReadFile }()
	readFile = func(p string) ([]byte, error) {
		if p == "/sys/fs/cgroup/memory.max" {
			return []byte("268435456\n"), nil
		}
		return nil, errors.New("no such file")
	}
	before := debug.SetMemoryLimit(-1) // -1 reads it
	ctx, cancel := context.WithCancel(context.Background())
	Start(ctx)
	if got, want := debug.SetMemoryLimit(-1), int64(268435456-268435456/10); got != want {
		t.Errorf("soft limit %d while paced, want %d", got, want)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for debug.SetMemoryLimit(-1) != before {
		if time.Now().After(deadline) {
			t.Fatalf("soft limit %d after stopping, want %d back", debug.SetMemoryLimit(-1), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if before != math.MaxInt64 {
		t.Logf("the test process had a soft limit of %d already", before)
	}
}
