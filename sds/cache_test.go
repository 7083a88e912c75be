package sds_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/sds"
)

var start = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// flakyFetcher signs locally but can be switched off, like a CA outage.
type flakyFetcher struct {
	sds.LocalFetcher
	down  atomic.Bool
	calls atomic.Int32
}

func (f *flakyFetcher) Fetch(ctx context.Context, id spiffeid.ID) (*sds.SVID, error) {
	f.calls.Add(1)
	if f.down.Load() {
		return nil, errors.New("connection refused")
	}
	return f.LocalFetcher.Fetch(ctx, id)
}

func newFetcher(t *testing.T, clock *catest.Clock, ttl time.Duration) *flakyFetcher {
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: clock}), catest.WithClock(clock), func(c *ca.Config) { c.Backdate = time.Second })
	return &flakyFetcher{LocalFetcher: sds.LocalFetcher{Authority: a, TTL: ttl}}
}

// waitParked waits until n goroutines wait on the fake clock.
func waitParked(t *testing.T, clock *catest.Clock, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for clock.Waiters() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d goroutines waiting on the clock, want %d", clock.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRotationAtHalfLife(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	f := newFetcher(t, clock, time.Hour)
	var mu sync.Mutex
	var updates []*sds.SVID
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := sds.NewCache(ctx, sds.Config{Fetcher: f, Clock: clock, OnUpdate: func(s *sds.SVID) {
		mu.Lock()
		updates = append(updates, s)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := catest.ID("default", "sleep")
	first, err := c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	waitParked(t, clock, 1)
	clock.Add(25 * time.Minute) // before half-life (minus at most 5% jitter): nothing
	time.Sleep(20 * time.Millisecond)
	if f.calls.Load() != 1 {
		t.Fatalf("rotated before half its lifetime (%d fetches)", f.calls.Load())
	}
	clock.Add(6 * time.Minute) // past half-life
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(updates)
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d updates, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	cur, _ := c.Get(ctx, id)
	if cur.Certs[0].SerialNumber.Cmp(first.Certs[0].SerialNumber) == 0 {
		t.Fatal("Get still returns the first SVID after rotation")
	}
}

func TestCAOutageKeepsServingThenExpires(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	f := newFetcher(t, clock, time.Hour)
	c, _ := sds.NewCache(context.Background(), sds.Config{Fetcher: f, Clock: clock, MinBackoff: time.Second, MaxBackoff: 8 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := catest.ID("default", "sleep")
	first, err := c.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	f.down.Store(true)
	waitParked(t, clock, 1)
	clock.Add(31 * time.Minute) // rotation due; the CA is down
	// Retries back off: 1s, 2s, 4s, 8s, 8s...
	for i, step := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		waitParked(t, clock, 1)
		before := f.calls.Load()
		clock.Add(step - time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		if f.calls.Load() != before {
			t.Fatalf("retry %d came before its %s backoff", i, step)
		}
		clock.Add(time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		for f.calls.Load() == before {
			if time.Now().After(deadline) {
				t.Fatalf("retry %d did not come after %s", i, step)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if got, err := c.Get(ctx, id); err != nil || got != first {
		t.Fatalf("during the outage Get = %v, %v; want the current SVID", got, err)
	}
	// The CA comes back: the next retry succeeds.
	f.down.Store(false)
	waitParked(t, clock, 1)
	clock.Add(8 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if cur, _ := c.Get(ctx, id); cur != nil && cur != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no new SVID after the CA came back")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestExpiredIsNeverServed(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	f := newFetcher(t, clock, time.Hour)
	c, _ := sds.NewCache(context.Background(), sds.Config{Fetcher: f, Clock: clock, MaxBackoff: 10 * time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := catest.ID("default", "sleep")
	if _, err := c.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	f.down.Store(true)
	waitParked(t, clock, 1)
	clock.Add(2 * time.Hour)
	if _, err := c.Get(ctx, id); !errors.Is(err, sds.ErrExpired) {
		t.Fatalf("Get after expiry = %v, want ErrExpired", err)
	}
	if c.Current(id) != nil {
		t.Fatal("Current returned an expired SVID")
	}
}

func TestFirstFetchFailureIsRetriedByNextGet(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	f := newFetcher(t, clock, time.Hour)
	f.down.Store(true)
	c, _ := sds.NewCache(context.Background(), sds.Config{Fetcher: f, Clock: clock})
	id := catest.ID("default", "sleep")
	if _, err := c.Get(context.Background(), id); err == nil || err.Error() != "sds: fetch spiffe://cluster.local/ns/default/sa/sleep: connection refused" {
		t.Fatalf("err = %v", err)
	}
	f.down.Store(false)
	if _, err := c.Get(context.Background(), id); err != nil {
		t.Fatalf("second Get: %v", err)
	}
}

// The CA backdates NotBefore by a minute; a 10-second SVID must still be
// rotated about 5 s after it arrived, not immediately and forever.
func TestRefreshIgnoresBackdate(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start.Add(time.Hour))
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{Clock: catest.NewClock(start)}), catest.WithClock(clock))
	f := &flakyFetcher{LocalFetcher: sds.LocalFetcher{Authority: a, TTL: 10 * time.Second}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, _ := sds.NewCache(ctx, sds.Config{Fetcher: f, Clock: clock, Jitter: 0.05})
	s, err := c.Get(ctx, catest.ID("default", "sleep"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Certs[0].NotBefore.After(clock.Now().Add(-30 * time.Second)) {
		t.Fatalf("fixture: NotBefore %s is not backdated", s.Certs[0].NotBefore)
	}
	wait := c.RefreshAt(s).Sub(clock.Now())
	if wait < 4*time.Second || wait > 5*time.Second {
		t.Fatalf("refresh in %s, want 5s minus at most 5%% jitter", wait)
	}
	waitParked(t, clock, 1)
	if f.calls.Load() != 1 {
		t.Fatalf("%d fetches right after the first; rotation is looping", f.calls.Load())
	}
}

// TestIdleIdentityIsDropped: with InUse, an identity is renewed while a
// stream serves it or someone asked for it since its last fetch, and
// dropped (not renewed, its goroutine gone) once neither holds; a later
// Get fetches it afresh.
// TestIdleIdentityIsDropped: with Config.InUse, and with a consumer added
// by Watch (as serve wires its SDS and ADS servers).
func TestIdleIdentityIsDropped(t *testing.T) {
	t.Parallel()
	for _, viaWatch := range []bool{false, true} {
		t.Run(map[bool]string{false: "config", true: "watch"}[viaWatch], func(t *testing.T) {
			t.Parallel()
			idleDropped(t, viaWatch)
		})
	}
}

func idleDropped(t *testing.T, viaWatch bool) {
	clock := catest.NewClock(start)
	f := newFetcher(t, clock, time.Hour)
	var inUse atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var dropped atomic.Value
	cfg := sds.Config{Fetcher: f, Clock: clock, InUse: func(spiffeid.ID) bool { return inUse.Load() }, OnDrop: func(id spiffeid.ID) { dropped.Store(id) }}
	var updates atomic.Int32
	if viaWatch {
		cfg.InUse = nil
	}
	c, err := sds.NewCache(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if viaWatch {
		c.Watch(func(*sds.SVID) { updates.Add(1) }, func(spiffeid.ID) bool { return inUse.Load() })
		defer func() {
			if updates.Load() < 2 {
				t.Errorf("the watcher heard of %d rotations", updates.Load())
			}
		}()
	}
	id := catest.ID("default", "sleep")
	waitCalls := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for f.calls.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d fetches, want %d", f.calls.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := c.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	// A stream serves it: renewed at half-life.
	inUse.Store(true)
	waitParked(t, clock, 1)
	clock.Add(31 * time.Minute)
	waitCalls(2)
	// No stream, but a Get since the last fetch: renewed once more.
	inUse.Store(false)
	waitParked(t, clock, 1)
	clock.Add(time.Minute)
	if _, err := c.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	clock.Add(30 * time.Minute)
	waitCalls(3)
	// Neither: dropped at the next rotation, not renewed.
	waitParked(t, clock, 1)
	clock.Add(31 * time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for c.Current(id) != nil || clock.Waiters() != 0 || dropped.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("idle identity still cached (current %v, %d goroutines on the clock)", c.Current(id) != nil, clock.Waiters())
		}
		time.Sleep(time.Millisecond)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d fetches: the idle identity was renewed", n)
	}
	if got, _ := dropped.Load().(spiffeid.ID); got != id {
		t.Fatalf("OnDrop heard of %v, want %s", got, id)
	}
	if _, err := c.Get(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitCalls(4)
}
