// Package gctune paces the garbage collector of a long-running server.
//
// With Go's default (GOGC=100) a collection starts whenever the heap has
// doubled since the last one. A CA's live heap is small (about 8 MiB
// serving thousands of certificates a second), so it collects dozens of
// times a second and spends a tenth or more of its CPU doing so. gctune
// keeps about Headroom bytes of allocation between collections: GOGC is
// raised to Headroom/base (at most MaxPercent) while the base is small,
// and is Go's 100 once it exceeds Headroom, so a large mesh's heap still
// grows by at most its own size. The base is what Go's pacer multiplies
// GOGC by: the live heap plus the goroutine stacks and globals it scans.
// Setting GOGC in the environment leaves the collector as the operator
// set it.
//
// In a container with a memory limit (and no GOMEMLIMIT set), the
// collector is also given a soft limit of nine tenths of it, so that the
// headroom never costs an out-of-memory kill: near the limit Go collects
// as often as it must.
package gctune

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// Headroom is the allocation allowed between collections while the
	// base (live heap, stacks, globals) is smaller.
	Headroom = 32 << 20
	// MaxPercent bounds the GOGC set for a tiny base.
	MaxPercent = 1000
	// every is how often the base is read.
	every = time.Second
)

// Percent is the GOGC for a base (live heap, stacks and globals) of base
// bytes.
func Percent(base uint64) int {
	if base == 0 {
		return MaxPercent
	}
	return int(max(100, min(Headroom*100/base, MaxPercent)))
}

var (
	mu          sync.Mutex
	users       int
	stop        chan struct{}
	done        chan struct{}
	initial     int
	initialSoft int64 = -1 // the memory limit before Start set one; -1: none set

	// readFile reads the cgroup files (tests replace it).
	readFile = os.ReadFile
)

// containerLimit is the memory limit of this process's cgroup (v2
// memory.max, else v1 memory.limit_in_bytes); ok is false without one.
func containerLimit() (limit uint64, ok bool) {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := readFile(p)
		if err != nil {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n == 0 || n >= 1<<62 { // "max", or v1's "unlimited" (nearly 2^63)
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// Start paces the collector until ctx is done (or, with several callers
// in one process, until the last one's is); then GOGC and the memory
// limit are restored. It does nothing when the environment sets GOGC.
func Start(ctx context.Context) {
	if os.Getenv("GOGC") != "" { // empty is Go's default, as unset
		return
	}
	mu.Lock()
	defer mu.Unlock()
	users++
	if users == 1 {
		stop, done = make(chan struct{}), make(chan struct{})
		if limit, ok := containerLimit(); ok && os.Getenv("GOMEMLIMIT") == "" {
			initialSoft = debug.SetMemoryLimit(int64(limit - limit/10))
		}
		p := Percent(base())
		initial = debug.SetGCPercent(p)
		go loop(stop, done, p)
	}
	go func() {
		<-ctx.Done()
		mu.Lock()
		defer mu.Unlock()
		users--
		if users == 0 {
			close(stop)
			<-done
			debug.SetGCPercent(initial)
			if initialSoft >= 0 {
				debug.SetMemoryLimit(initialSoft)
				initialSoft = -1
			}
		}
	}()
}

func loop(stop, done chan struct{}, cur int) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		// A change under a tenth is not worth the collector's retuning.
		if p := Percent(base()); p*10 < cur*9 || p*10 > cur*11 {
			debug.SetGCPercent(p)
			cur = p
		}
	}
}

// base is what the pacer multiplies GOGC by: the heap the last
// collection found live, and the stacks and globals it scanned (0 before
// the first collection).
func base() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	metrics.Read(s)
	var sum uint64
	for _, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			sum += v.Value.Uint64()
		}
	}
	return sum
}
