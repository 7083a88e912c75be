package oidc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Run fetches new issuers at once, refreshes known ones and retries
// failures, at most Workers at a time, until ctx ends; changed is called
// (on a goroutine of its own, coalesced) when a key set appears or
// changes, and the control plane recompiles. When Run returns, no fetch
// it started is left running.
func (r *Resolver) Run(ctx context.Context, changed func()) error {
	var wg sync.WaitGroup
	notify := make(chan struct{}, 1)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-notify:
				changed()
			}
		}
	})
	freed := make(chan struct{}, r.cfg.Workers) // never more sends than workers
	busy := 0
	// Due times are the clock's (a test's clock moves without timers):
	// looked at on every tick.
	t := time.NewTicker(min(r.cfg.Retry, time.Second))
	defer t.Stop()
	for {
		for _, j := range r.take(ctx, r.cfg.Workers-busy) {
			busy++
			wg.Go(func() {
				if r.do(j) {
					select {
					case notify <- struct{}{}:
					default:
					}
				}
				freed <- struct{}{}
			})
		}
		select {
		case <-ctx.Done():
			wg.Wait() // the fetches' contexts are ctx's: they end now
			return nil
		case <-freed:
			busy--
		case <-r.kick:
		case <-t.C:
		}
	}
}

// Sync fetches every issuer that is new, due for refresh, or failed long
// enough ago, at most Workers at a time; it waits for them all and
// reports whether any key set changed.
func (r *Resolver) Sync(ctx context.Context) bool {
	var changed atomic.Bool
	var wg sync.WaitGroup
	workers := make(chan struct{}, r.cfg.Workers)
	for _, j := range r.take(ctx, math.MaxInt) {
		workers <- struct{}{}
		wg.Go(func() {
			defer func() { <-workers }()
			if r.do(j) {
				changed.Store(true)
			}
		})
	}
	wg.Wait()
	return changed.Load()
}

// job is one discovery a worker does.
type job struct {
	issuer string
	e      *entry
	ctx    context.Context // ends when the issuer is forgotten or the caller stops
}

// take marks up to n due issuers as being fetched and returns them:
// issuers never tried first, so a new policy's keys do not wait behind
// the retries of failing issuers, then the longest waiting.
func (r *Resolver) take(ctx context.Context, n int) []job {
	if n <= 0 {
		return nil
	}
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var due []string
	for iss, e := range r.keys {
		if e.cancel == nil && (e.fetched.IsZero() || now.Sub(e.fetched) >= r.wait(e)) {
			due = append(due, iss)
		}
	}
	slices.SortFunc(due, func(a, b string) int {
		return cmp.Or(r.keys[a].fetched.Compare(r.keys[b].fetched), strings.Compare(a, b))
	})
	jobs := make([]job, 0, min(n, len(due)))
	for _, iss := range due[:min(n, len(due))] {
		e := r.keys[iss]
		jctx, cancel := context.WithCancel(ctx)
		e.cancel = cancel
		jobs = append(jobs, job{issuer: iss, e: e, ctx: jctx})
	}
	return jobs
}

// wait is how long after its last attempt an issuer is due again: the
// refresh interval while its keys are known, else Retry doubled for each
// failure after the first, at most RetryMax.
func (r *Resolver) wait(e *entry) time.Duration {
	if e.jwks != "" {
		return r.cfg.Refresh
	}
	d := r.cfg.Retry
	for i := 1; i < e.failures && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, r.cfg.RetryMax)
}

// do runs one discovery, within the timeout, and records what came of
// it; it reports whether the issuer's key set changed.
func (r *Resolver) do(j job) bool {
	ctx, cancel := context.WithTimeout(j.ctx, r.cfg.Timeout)
	defer cancel()
	jwks, err := r.fetch(ctx, j.issuer)
	if err != nil && j.ctx.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("oidc: discovery of %s did not finish within %s: %w", j.issuer, r.cfg.Timeout, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := j.e
	stopped := j.ctx.Err() != nil
	e.cancel()
	e.cancel = nil
	if stopped || r.keys[j.issuer] != e {
		return false // forgotten meanwhile, or the caller is stopping
	}
	e.fetched = r.cfg.Clock.Now()
	switch {
	case err == nil:
		e.failures = 0
		changed := jwks != e.jwks
		if changed {
			r.cfg.Log.Info("oidc: keys discovered", "issuer", j.issuer)
		}
		e.jwks, e.err = jwks, nil
		return changed
	case e.jwks != "":
		// Keep serving the last good keys through an outage of the
		// issuer; say so.
		e.failures++
		r.cfg.Log.Warn("oidc: refresh failed; keeping the keys fetched before", "issuer", j.issuer, "error", err.Error())
	default:
		e.failures++
		if e.err == nil || e.err.Error() != err.Error() {
			r.cfg.Log.Error("oidc: discovery failed; this issuer's tokens are refused until it succeeds", "issuer", j.issuer, "error", err.Error())
		}
		e.err = err
	}
	return false
}
