package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/server"
)

func TestTokenCacheExpiryAndBound(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &server.TokenCache{Size: 3}
	caller := &server.Caller{ID: catest.ID("a", "x")}
	c.Put("tok-1", caller, now.Add(time.Minute), now)
	if got, ok := c.Get("tok-1", now.Add(59*time.Second)); !ok || got != caller {
		t.Fatal("cached token not found before expiry")
	}
	if _, ok := c.Get("tok-1", now.Add(time.Minute)); ok {
		t.Fatal("cached token returned at its expiry")
	}
	if _, ok := c.Get("tok-2", now); ok {
		t.Fatal("unknown token found")
	}
	c.Put("expired", caller, now, now)
	if c.Len() != 0 {
		t.Fatal("an already expired token was cached")
	}
	for i := range 10 {
		c.Put(fmt.Sprintf("t%d", i), caller, now.Add(time.Hour), now)
	}
	if c.Len() > 3 {
		t.Fatalf("cache holds %d entries, bound is 3", c.Len())
	}
	if _, ok := c.Get("t9", now); !ok {
		t.Fatal("the newest entry was evicted")
	}
}

// BenchmarkTokenCachePutFull is a scale-up against a full cache of live
// tokens: each new token evicts one entry without scanning the cache
// (before, every Put scanned all 10,000 entries for expired ones).
func BenchmarkTokenCachePutFull(b *testing.B) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &server.TokenCache{Size: 10000}
	caller := &server.Caller{ID: catest.ID("a", "x")}
	for i := range 10000 {
		c.Put(fmt.Sprintf("seed-%d", i), caller, now.Add(time.Hour), now)
	}
	i := 0
	for b.Loop() {
		i++
		c.Put(fmt.Sprintf("tok-%d", i), caller, now.Add(time.Hour), now.Add(time.Duration(i)*time.Microsecond))
	}
	if c.Len() > 10000 {
		b.Fatalf("cache holds %d entries", c.Len())
	}
}
