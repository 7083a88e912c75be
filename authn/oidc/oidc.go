// Package oidc finds the keys of JWT issuers by OpenID Connect discovery:
// <issuer>/.well-known/openid-configuration names a jwks_uri, whose key
// set is cached and refreshed. It is the control plane's half of a
// RequestAuthentication rule that names only an issuer; the authn
// compiler reads the cache (authn.KeySource) and inlines the keys, or a
// key set nothing verifies against while they are unknown (fail closed).
//
// Issuers are fetched concurrently by a bounded number of workers, each
// discovery within a timeout, so an issuer that never answers holds one
// worker for at most that long and does not hold up the others. The
// control plane names the issuers its configuration needs (SetIssuers) on
// every change; the others are forgotten.
package oidc

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/ca"
)

// Defaults.
const (
	DefaultRefresh  = 20 * time.Minute // as Istio refreshes discovered keys
	DefaultTimeout  = 10 * time.Second
	DefaultWorkers  = 8
	DefaultRetry    = 5 * time.Second
	DefaultRetryMax = 5 * time.Minute
)

// Config are the resolver's dependencies; zero values get defaults.
type Config struct {
	Client *http.Client // default: a plain http.Client (Timeout bounds each discovery)
	// Timeout bounds one discovery of an issuer: the configuration
	// document and the key set together. A hung issuer holds a worker no
	// longer than this.
	Timeout time.Duration
	// Workers is how many issuers are fetched at once (default 8).
	Workers int
	// Refresh is how often known keys are fetched again; a failed
	// refresh keeps the keys and tries again after Refresh.
	Refresh time.Duration
	// Retry is the wait after an issuer's first failed discovery; it
	// doubles after each further failure, up to RetryMax.
	Retry    time.Duration
	RetryMax time.Duration
	Clock    ca.Clock // default the wall clock
	Log      *slog.Logger
}

// Resolver caches discovered key sets by issuer.
type Resolver struct {
	cfg  Config
	mu   sync.Mutex
	keys map[string]*entry
	// told: SetIssuers was called, and the set it gave is the one
	// fetched; before, JWKS adds the issuers it is asked for.
	told bool
	kick chan struct{}
}

type entry struct {
	jwks     string
	err      error
	fetched  time.Time // when the last attempt ended
	failures int       // attempts failed in a row
	// cancel ends the fetch under way; nil when there is none.
	cancel context.CancelFunc
}

var _ authn.KeySource = (*Resolver)(nil)

// New returns a resolver; Run fetches.
func New(cfg Config) *Resolver {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Retry == 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	cfg.RetryMax = max(cfg.RetryMax, cfg.Retry)
	if cfg.Clock == nil {
		cfg.Clock = ca.SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Resolver{cfg: cfg, keys: map[string]*entry{}, kick: make(chan struct{}, 1)}
}

// ErrPending is JWKS's answer for an issuer not fetched yet.
var ErrPending = errors.New("oidc: discovery not done yet")

// JWKS returns the issuer's key set as last fetched, or why there is
// none. Until SetIssuers is first called, an issuer asked for the first
// time is fetched by Run; after, only the issuers SetIssuers names are.
func (r *Resolver) JWKS(issuer string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.keys[issuer]
	if !ok {
		// Told: an issuer outside the set is one a compile of the
		// configuration before the last asks for; it stays forgotten.
		if !r.told {
			r.keys[issuer] = &entry{err: ErrPending}
			r.wake()
		}
		return "", ErrPending
	}
	if e.jwks == "" {
		return "", e.err
	}
	return e.jwks, nil
}

// SetIssuers gives the issuers the configuration discovers keys for; the
// control plane calls it on every configuration change. New ones are
// fetched at once; the others are forgotten: their keys dropped, a fetch
// under way cancelled, no retry.
func (r *Resolver) SetIssuers(issuers []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.told = true
	wanted := make(map[string]bool, len(issuers))
	for _, iss := range issuers {
		wanted[iss] = true
		if _, ok := r.keys[iss]; !ok {
			r.keys[iss] = &entry{err: ErrPending}
			r.wake()
		}
	}
	for iss, e := range r.keys {
		if wanted[iss] {
			continue
		}
		if e.cancel != nil {
			e.cancel()
		}
		delete(r.keys, iss)
		r.cfg.Log.Info("oidc: issuer forgotten: no policy names it any more", "issuer", iss)
	}
}

// wake tells Run there is an issuer to fetch (r.mu held).
func (r *Resolver) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
