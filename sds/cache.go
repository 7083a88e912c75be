package sds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// Fetcher obtains a new SVID for an identity from the CA.
type Fetcher interface {
	Fetch(ctx context.Context, id spiffeid.ID) (*SVID, error)
}

// ErrExpired is returned while the only SVID held has expired and the CA
// cannot be reached: an expired certificate is never served.
var ErrExpired = errors.New("sds: SVID expired and no replacement could be fetched")

// Config configures a Cache.
type Config struct {
	Fetcher    Fetcher
	Clock      ca.Timer      // default the wall clock
	Jitter     float64       // rotate up to this fraction of the lifetime early (default 0.05)
	MinBackoff time.Duration // first retry after a CA error (default 1s)
	MaxBackoff time.Duration // cap of the exponential backoff (default 1m)
	Log        *slog.Logger
	// FetchAttrs name what the Fetcher depends on (the agent: the CA's
	// address and the token file); they are logged with every failed
	// rotation, so that the operator knows what to check.
	FetchAttrs []slog.Attr
	// OnUpdate is called (outside locks) after every new SVID, including
	// the first; sds/server pushes from it.
	OnUpdate func(*SVID)
	// InUse reports whether a stream still serves an identity. When set,
	// an identity that no stream serves and that nobody asked for since
	// its last fetch is dropped when it is due for rotation, instead of
	// being renewed forever: a control plane outlives many workloads.
	// Nil keeps every identity (a per-workload agent).
	InUse func(spiffeid.ID) bool
	// OnDrop is called (outside locks) after an idle identity was
	// dropped (see InUse): a node agent stops following its namespace's
	// bundles when the last of its identities leaves.
	OnDrop func(spiffeid.ID)
}

// Cache holds one SVID per identity and rotates each in the background
// for as long as the context it was made with lives.
type Cache struct {
	ctx     context.Context
	cfg     Config
	workers sync.WaitGroup // rotation goroutines
	mu      sync.Mutex
	entries map[spiffeid.ID]*entry
	watch   []watcher // consumers added after construction (Watch)
	renewMu sync.Mutex
	renewCh chan struct{} // closed by RenewAll

	rotated, failed atomic.Uint64
}

// Stats are the cache's figures for metrics: rotations done and failed
// since it was made, the SVIDs held, and the earliest expiry among them
// (zero when none).
func (c *Cache) Stats() (rotated, failed uint64, held int, earliest time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.svid == nil || len(e.svid.Certs) == 0 {
			continue
		}
		held++
		if na := e.svid.Certs[0].NotAfter; earliest.IsZero() || na.Before(earliest) {
			earliest = na
		}
	}
	return c.rotated.Load(), c.failed.Load(), held, earliest
}

type watcher struct {
	updated func(*SVID)
	inUse   func(spiffeid.ID) bool
}

// Watch adds a consumer once it exists (SDS or ADS server): updated is
// called after every new SVID, as Config.OnUpdate is, and inUse (may be
// nil) tells whether it still serves an identity (see Config.InUse). Wiring
// consumers after they are made keeps callbacks from reaching a server
// that is not assigned yet.
func (c *Cache) Watch(updated func(*SVID), inUse func(spiffeid.ID) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watch = append(c.watch, watcher{updated, inUse})
}

func (c *Cache) watchers() []watcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]watcher(nil), c.watch...)
}

// inUse: nil when nobody says (keep every identity), else whether any
// consumer serves id.
func (c *Cache) inUse(id spiffeid.ID) (known, used bool) {
	if c.cfg.InUse != nil {
		known = true
		if c.cfg.InUse(id) {
			return true, true
		}
	}
	for _, w := range c.watchers() {
		if w.inUse != nil {
			known = true
			if w.inUse(id) {
				return true, true
			}
		}
	}
	return known, false
}

type entry struct {
	ready   chan struct{} // closed once the first fetch is done
	svid    *SVID
	err     error
	lastGet time.Time // the last Get (or Put)
}

// NewCache checks cfg and returns an empty cache; rotation goroutines stop
// when ctx is done.
func NewCache(ctx context.Context, cfg Config) (*Cache, error) {
	if cfg.Fetcher == nil {
		return nil, errors.New("sds: Fetcher is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = ca.SystemClock{}
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = 0.05
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Cache{ctx: ctx, cfg: cfg, entries: map[spiffeid.ID]*entry{}}, nil
}

// Get returns id's current SVID, fetching it on first use (bounded by ctx);
// from then on a goroutine keeps it fresh.
func (c *Cache) Get(ctx context.Context, id spiffeid.ID) (*SVID, error) {
	c.mu.Lock()
	e, ok := c.entries[id]
	if ok {
		e.lastGet = c.cfg.Clock.Now()
	} else {
		e = &entry{ready: make(chan struct{}), lastGet: c.cfg.Clock.Now()}
		c.entries[id] = e
		c.mu.Unlock()
		svid, err := c.cfg.Fetcher.Fetch(ctx, id)
		c.stamp(svid)
		c.mu.Lock()
		e.svid, e.err = svid, err
		close(e.ready)
		if err != nil {
			delete(c.entries, id) // the next caller tries again
			c.mu.Unlock()
			return nil, fmt.Errorf("sds: fetch %s: %w", id, err)
		}
		c.mu.Unlock()
		c.notify(svid)
		c.workers.Go(func() { c.rotate(c.ctx, id) })
		return svid, nil
	}
	c.mu.Unlock()
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.err != nil {
		return nil, e.err
	}
	if !c.cfg.Clock.Now().Before(e.svid.Certs[0].NotAfter) {
		return nil, ErrExpired
	}
	return e.svid, nil
}

// Wait returns once every rotation goroutine has stopped (after the
// cache's context is done), so no update or file write outlives shutdown.
func (c *Cache) Wait() { c.workers.Wait() }

// Current returns id's SVID without fetching; nil when there is none or it
// has expired.
func (c *Cache) Current(id spiffeid.ID) *SVID {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok || e.svid == nil || !c.cfg.Clock.Now().Before(e.svid.Certs[0].NotAfter) {
		return nil
	}
	return e.svid
}

// expiredRetry is the longest wait between renewals once the SVID has
// expired: one dial every 2 s.
const expiredRetry = 2 * time.Second

// minRefresh keeps a very short-lived SVID from being refetched in a
// tight loop.
const minRefresh = time.Second

// RefreshAt is when an SVID is due for rotation: half of its remaining
// lifetime when it was received, brought forward by a random fraction (up
// to Jitter) so that workloads started together do not rotate together.
func (c *Cache) RefreshAt(s *SVID) time.Time {
	from := s.Fetched
	if from.IsZero() || from.Before(s.Certs[0].NotBefore) {
		from = s.Certs[0].NotBefore
	}
	life := s.Certs[0].NotAfter.Sub(from)
	early := time.Duration(rand.Float64() * c.cfg.Jitter * float64(life))
	at := from.Add(life/2 - early)
	if floor := from.Add(minRefresh); at.Before(floor) {
		at = floor
	}
	return at
}

// stamp records when s arrived.
func (c *Cache) stamp(s *SVID) *SVID {
	if s != nil && s.Fetched.IsZero() {
		s.Fetched = c.cfg.Clock.Now()
	}
	return s
}

func (c *Cache) rotate(ctx context.Context, id spiffeid.ID) {
	backoff := c.cfg.MinBackoff
	c.mu.Lock()
	cur := c.entries[id].svid
	c.mu.Unlock()
	wait := c.RefreshAt(cur).Sub(c.cfg.Clock.Now())
	renew := c.renewSignal()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(wait):
		case <-renew:
			c.cfg.Log.Info("renewing SVID early: the CA signs under a new root", "id", id.String())
		}
		// Taken before the fetch: a RenewAll during it fires at once.
		renew = c.renewSignal()
		if c.dropIdle(id, cur) {
			return
		}
		svid, err := c.cfg.Fetcher.Fetch(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failed.Add(1)
			left := cur.Certs[0].NotAfter.Sub(c.cfg.Clock.Now())
			wait = backoff
			switch {
			case left > 0 && left < wait:
				// Try once more as the SVID expires, and say so then.
				wait = left + 100*time.Millisecond
			case left <= 0:
				// Nothing to serve: come back as soon as the CA does.
				wait = min(wait, expiredRetry)
			}
			if left <= 0 {
				c.cfg.Log.Error("SVID expired and renewal keeps failing: it is no longer served (the trust bundle still is)",
					c.failureAttrs(id, err, wait, "expired", cur.Certs[0].NotAfter.UTC())...)
			} else {
				c.cfg.Log.Warn("SVID rotation failed; serving the current one and retrying",
					c.failureAttrs(id, err, wait, "validFor", left.Round(time.Second).String())...)
			}
			backoff = min(backoff*2, c.cfg.MaxBackoff)
			continue
		}
		backoff = c.cfg.MinBackoff
		c.rotated.Add(1)
		c.stamp(svid)
		c.mu.Lock()
		c.entries[id].svid = svid
		c.mu.Unlock()
		cur = svid
		c.cfg.Log.Info("rotated SVID", "id", id.String(), "notAfter", svid.Certs[0].NotAfter)
		c.notify(svid)
		wait = c.RefreshAt(svid).Sub(c.cfg.Clock.Now())
	}
}

// failureAttrs are the attributes of a failed rotation's log line: the
// identity, then extra, what the fetch depends on (Config.FetchAttrs),
// when the next attempt is, and the error.
func (c *Cache) failureAttrs(id spiffeid.ID, err error, retryIn time.Duration, extra ...any) []any {
	attrs := append([]any{"id", id.String()}, extra...)
	for _, a := range c.cfg.FetchAttrs {
		attrs = append(attrs, a)
	}
	return append(attrs, "retryIn", retryIn.String(), "error", err.Error())
}

// renewSignal is closed by the next RenewAll.
func (c *Cache) renewSignal() <-chan struct{} {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	if c.renewCh == nil {
		c.renewCh = make(chan struct{})
	}
	return c.renewCh
}

// RenewAll has every SVID fetched again now instead of at half-life: a
// root rotation has moved signing to a new root, and leaves under it
// should replace the old ones before the old root is retired.
func (c *Cache) RenewAll() {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	if c.renewCh != nil {
		close(c.renewCh)
	}
	c.renewCh = make(chan struct{})
}

// dropIdle removes id's entry when no stream serves it and nobody asked
// for it since cur was fetched (see Config.InUse).
func (c *Cache) dropIdle(id spiffeid.ID, cur *SVID) bool {
	if known, used := c.inUse(id); !known || used {
		return false
	}
	c.mu.Lock()
	e := c.entries[id]
	idle := e != nil && !e.lastGet.After(cur.Fetched)
	if idle {
		delete(c.entries, id)
	}
	c.mu.Unlock()
	if idle {
		c.cfg.Log.Info("dropped an idle SVID: no stream serves it", "id", id.String())
		if c.cfg.OnDrop != nil {
			c.cfg.OnDrop(id)
		}
	}
	return idle
}

func (c *Cache) notify(s *SVID) {
	if c.cfg.OnUpdate != nil {
		c.cfg.OnUpdate(s)
	}
	for _, w := range c.watchers() {
		if w.updated != nil {
			w.updated(s)
		}
	}
}

// Put installs an SVID obtained elsewhere (an agent's bootstrap request)
// and starts keeping it fresh. It replaces nothing: when id already has an
// entry, Put returns false.
func (c *Cache) Put(svid *SVID) bool {
	c.stamp(svid)
	c.mu.Lock()
	if _, ok := c.entries[svid.ID]; ok {
		c.mu.Unlock()
		return false
	}
	e := &entry{ready: make(chan struct{}), svid: svid, lastGet: c.cfg.Clock.Now()}
	close(e.ready)
	c.entries[svid.ID] = e
	c.mu.Unlock()
	c.notify(svid)
	c.workers.Go(func() { c.rotate(c.ctx, svid.ID) })
	return true
}
