package oidc_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/authn/oidc"
)

// want tells r the issuers the configuration names, as the xDS server
// does on every configuration it applies.
func want(r *oidc.Resolver, issuers ...string) { r.SetIssuers(issuers) }

// hangs counts the requests of issuers that accept a connection and never
// answer: each request blocks until the client gives up (its context
// ends) or the test does.
type hangs struct {
	mu                sync.Mutex
	entered, released int
	stop              chan struct{}
	closeStop         func()
}

func newHangs() *hangs {
	h := &hangs{stop: make(chan struct{})}
	h.closeStop = sync.OnceFunc(func() { close(h.stop) })
	return h
}

// issuer starts one hanging issuer and returns its URL.
func (h *hangs) issuer(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.entered++
		h.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-h.stop:
		}
		h.mu.Lock()
		h.released++
		h.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(h.closeStop) // before Close, which waits for the handlers
	return srv.URL
}

func (h *hangs) read(f func(h *hangs) int) int { h.mu.Lock(); defer h.mu.Unlock(); return f(h) }

// waitFor polls cond; the deadline only fails a test that would
// otherwise hang, it measures nothing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// run runs r until stop is called or the test ends; stop returns when
// Run has.
func run(t *testing.T, r *oidc.Resolver) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, func() {}) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(stop)
	return stop
}

// hasKeys reports whether r serves keys as iss's key set.
func hasKeys(r *oidc.Resolver, iss, keys string) func() bool {
	return func() bool { got, err := r.JWKS(iss); return err == nil && got == keys }
}

// counting sends requests with http.DefaultTransport and counts those
// under way.
type counting struct {
	mu             sync.Mutex
	inflight, most int
}

func (c *counting) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.inflight++
	c.most = max(c.most, c.inflight)
	c.mu.Unlock()
	defer func() { c.mu.Lock(); c.inflight--; c.mu.Unlock() }()
	return http.DefaultTransport.RoundTrip(req)
}

// TestHungIssuersDoNotDelayOthers: eight issuers that accept the
// connection and never answer do not hold up a good issuer's discovery:
// its keys are served while all eight requests are still blocked (they
// would be for the hour of the timeout). Serially, the good issuer waited
// for every hung one before it. There is a worker for each issuer here;
// TestWorkersBoundFetches has more hung issuers than workers.
func TestHungIssuersDoNotDelayOthers(t *testing.T) {
	t.Parallel()
	h := newHangs()
	var issuers []string
	for range 8 {
		issuers = append(issuers, h.issuer(t))
	}
	keys := jwk(t, "good")
	good := newIssuer(t, keys)
	r := oidc.New(oidc.Config{Workers: 9, Timeout: time.Hour})
	stop := run(t, r)
	want(r, append(issuers, good.srv.URL)...)
	waitFor(t, "the good issuer's keys", hasKeys(r, good.srv.URL, keys))
	waitFor(t, "all eight hung requests", func() bool { return h.read(func(h *hangs) int { return h.entered }) == 8 })
	if n := h.read(func(h *hangs) int { return h.released }); n != 0 {
		t.Fatalf("%d hung requests ended before the test did", n)
	}
	// Run leaves nothing behind: once it returns, every hung request
	// has been given up.
	stop()
	waitFor(t, "the hung requests given up", func() bool { return h.read(func(h *hangs) int { return h.released }) == 8 })
}

// TestWorkersBoundFetches: with more hung issuers than workers, exactly
// Workers fetches run at once, each hung one gives its worker back at the
// timeout (the issuer's request is cancelled), and a good issuer queued
// behind them is found.
func TestWorkersBoundFetches(t *testing.T) {
	t.Parallel()
	h := newHangs()
	var issuers []string
	for range 6 {
		issuers = append(issuers, h.issuer(t))
	}
	keys := jwk(t, "good")
	good := newIssuer(t, keys)
	// Counted where the client sends: a server learns late that a
	// request was given up.
	client := &counting{}
	r := oidc.New(oidc.Config{Workers: 3, Timeout: time.Second, Retry: time.Hour, Client: &http.Client{Transport: client}})
	run(t, r)
	want(r, append(issuers, good.srv.URL)...)
	waitFor(t, "the good issuer's keys", hasKeys(r, good.srv.URL, keys))
	waitFor(t, "every hung request cancelled at the timeout", func() bool { return h.read(func(h *hangs) int { return h.released }) == 6 })
	client.mu.Lock()
	most := client.most
	client.mu.Unlock()
	if entered := h.read(func(h *hangs) int { return h.entered }); most != 3 || entered != 6 {
		t.Fatalf("%d requests at once at most (want 3, the workers), %d hung requests (want one per hung issuer)", most, entered)
	}
	for _, iss := range issuers {
		_, err := r.JWKS(iss)
		if err == nil || !strings.Contains(err.Error(), "oidc: discovery of "+iss+" did not finish within 1s") {
			t.Errorf("%s: %v", iss, err)
		}
	}
}

// TestTimeoutCoversTheWholeDiscovery: the timeout bounds the discovery
// document and the key set together, so an issuer slow at each holds a
// worker no longer than the timeout in all.
func TestTimeoutCoversTheWholeDiscovery(t *testing.T) {
	t.Parallel()
	const step = 600 * time.Millisecond // each step alone is within the timeout
	keys := jwk(t, "k")
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(step)
		w.Write([]byte(`{"issuer":"` + srv.URL + `","jwks_uri":"` + srv.URL + `/keys"}`))
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(step):
			w.Write([]byte(keys))
		case <-r.Context().Done():
		}
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r := oidc.New(oidc.Config{Timeout: time.Second})
	want(r, srv.URL)
	r.Sync(context.Background())
	got, err := r.JWKS(srv.URL)
	if err == nil || !strings.Contains(err.Error(), "oidc: discovery of "+srv.URL+" did not finish within 1s") || got != "" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestForgottenIssuersAreNotFetched: an issuer the configuration no
// longer names is forgotten: the fetch under way is cancelled, its
// retries stop (while another failing issuer's go on), and asking for its
// keys, as a compile of the previous configuration may, does not bring it
// back.
func TestForgottenIssuersAreNotFetched(t *testing.T) {
	t.Parallel()
	h := newHangs()
	hung := h.issuer(t)
	dropped, kept := newIssuer(t, ""), newIssuer(t, "")
	for _, is := range []*issuer{dropped, kept} {
		is.set(func(is *issuer) { is.discovery = http.StatusServiceUnavailable })
	}
	r := oidc.New(oidc.Config{Timeout: time.Hour, Retry: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond})
	run(t, r)
	want(r, hung, dropped.srv.URL, kept.srv.URL)
	waitFor(t, "the hung request", func() bool { return h.read(func(h *hangs) int { return h.entered }) == 1 })
	waitFor(t, "retries", func() bool { return dropped.requests() >= 3 })

	want(r, kept.srv.URL)
	waitFor(t, "the forgotten issuer's request cancelled", func() bool { return h.read(func(h *hangs) int { return h.released }) == 1 })
	if _, err := r.JWKS(dropped.srv.URL); !errors.Is(err, oidc.ErrPending) {
		t.Fatalf("a forgotten issuer: %v", err)
	}
	before, keptBefore := dropped.requests(), kept.requests()
	// The kept issuer's retries are the clock: five of them.
	waitFor(t, "the kept issuer's retries", func() bool { return kept.requests() >= keptBefore+5 })
	if n := dropped.requests() - before; n > 1 { // one may have been under way
		t.Fatalf("a forgotten issuer was fetched %d more times", n)
	}
	if n := h.read(func(h *hangs) int { return h.entered }); n != 1 {
		t.Fatalf("a forgotten hung issuer was asked %d times", n)
	}
}

// TestRetryBacksOff: an issuer whose discovery fails is tried again after
// 5 s, then after twice the previous wait each time, up to 5 minutes (the
// defaults).
func TestRetryBacksOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	is := newIssuer(t, jwk(t, "k"))
	is.set(func(is *issuer) { is.discovery = http.StatusServiceUnavailable })
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := oidc.New(oidc.Config{Clock: clock})
	want(r, is.srv.URL)
	r.Sync(ctx) // the first attempt
	backoff := func(waits ...time.Duration) {
		t.Helper()
		for _, wait := range waits {
			n := is.requests()
			clock.add(wait - time.Millisecond)
			r.Sync(ctx)
			if got := is.requests(); got != n {
				t.Fatalf("tried again before %s were up", wait)
			}
			clock.add(time.Millisecond)
			r.Sync(ctx)
			if got := is.requests(); got != n+1 {
				t.Fatalf("not tried again after %s", wait)
			}
		}
	}
	backoff(5*time.Second, 10*time.Second, 20*time.Second, 40*time.Second, 80*time.Second, 160*time.Second, 5*time.Minute, 5*time.Minute)
	// Once found, the keys are refreshed every 20 minutes.
	is.set(func(is *issuer) { is.discovery = http.StatusOK })
	clock.add(5 * time.Minute)
	if !r.Sync(ctx) {
		t.Fatal("keys not found")
	}
	n := is.requests()
	clock.add(20*time.Minute - time.Millisecond)
	r.Sync(ctx)
	clock.add(time.Millisecond)
	r.Sync(ctx)
	if got := is.requests(); got != n+1 {
		t.Fatalf("%d refreshes at 20 minutes, want 1", got-n)
	}
}

// TestNewIssuersGoFirst: when more issuers are due than there are
// workers, those never tried are fetched before the retries of failing
// ones, so a new rule does not wait behind issuers that keep failing.
func TestNewIssuersGoFirst(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var asked []string
	keys := jwk(t, "k")
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/b/.well-known/openid-configuration":
			w.Write([]byte(`{"issuer":"` + srv.URL + `/b","jwks_uri":"` + srv.URL + `/b/keys"}`))
		case "/b/keys":
			w.Write([]byte(keys))
		default: // a: failing
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	failing, added := srv.URL+"/a", srv.URL+"/b" // by name, a would go first
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := oidc.New(oidc.Config{Clock: clock, Workers: 1})
	ctx := context.Background()
	want(r, failing)
	r.Sync(ctx)
	clock.add(time.Hour) // a is due again
	want(r, failing, added)
	r.Sync(ctx)
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(asked, " "); got != "/a/.well-known/openid-configuration /b/.well-known/openid-configuration /b/keys /a/.well-known/openid-configuration" {
		t.Fatalf("requests in this order: %s", got)
	}
}
