// Package oidc finds the keys of JWT issuers by OpenID Connect discovery:
// <issuer>/.well-known/openid-configuration names a jwks_uri, whose key
// set is cached and refreshed. It is the control plane's half of a
// RequestAuthentication rule that names only an issuer; the authn
// compiler reads the cache (authn.KeySource) and inlines the keys, or a
// key set nothing verifies against while they are unknown (fail closed).
package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/ca"
)

// Defaults (Istio refreshes discovered keys every 20 minutes).
const (
	DefaultRefresh = 20 * time.Minute
	DefaultTimeout = 5 * time.Second
	maxBody        = 1 << 20
)

// Config are the resolver's dependencies; zero values get defaults.
type Config struct {
	Client  *http.Client  // default: http.Client with Timeout
	Timeout time.Duration // per request
	Refresh time.Duration // how often known keys are fetched again
	Retry   time.Duration // after a failure (default Refresh/20, at least 1s)
	Clock   ca.Clock      // default the wall clock
	Log     *slog.Logger
}

// Resolver caches discovered key sets by issuer.
type Resolver struct {
	cfg  Config
	mu   sync.Mutex
	keys map[string]*entry
	kick chan struct{}
}

type entry struct {
	jwks    string
	err     error
	fetched time.Time // last attempt
}

var _ authn.KeySource = (*Resolver)(nil)

// New returns a resolver; Run fetches.
func New(cfg Config) *Resolver {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Retry == 0 {
		cfg.Retry = max(cfg.Refresh/20, time.Second)
	}
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
// none. An issuer asked for the first time is fetched by Run.
func (r *Resolver) JWKS(issuer string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.keys[issuer]
	if !ok {
		r.keys[issuer] = &entry{err: ErrPending}
		select {
		case r.kick <- struct{}{}:
		default:
		}
		return "", ErrPending
	}
	if e.jwks == "" {
		return "", e.err
	}
	return e.jwks, nil
}

// Run fetches new issuers at once, refreshes known ones, and retries
// failures, until ctx ends; changed is called when a key set appears or
// changes (the control plane recompiles).
func (r *Resolver) Run(ctx context.Context, changed func()) error {
	t := time.NewTicker(min(r.cfg.Retry, time.Second))
	defer t.Stop()
	for {
		if r.Sync(ctx) {
			changed()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-t.C:
		}
	}
}

// Sync fetches every issuer that is new, due for refresh, or failed long
// enough ago, and reports whether any key set changed.
func (r *Resolver) Sync(ctx context.Context) bool {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	var due []string
	for iss, e := range r.keys {
		wait := r.cfg.Refresh
		if e.jwks == "" {
			wait = r.cfg.Retry
		}
		if e.fetched.IsZero() || now.Sub(e.fetched) >= wait {
			due = append(due, iss)
		}
	}
	r.mu.Unlock()
	sort.Strings(due)
	changed := false
	for _, iss := range due {
		jwks, err := r.fetch(ctx, iss)
		r.mu.Lock()
		e := r.keys[iss]
		e.fetched = now
		switch {
		case err == nil:
			if jwks != e.jwks {
				changed = true
				r.cfg.Log.Info("oidc: keys discovered", "issuer", iss)
			}
			e.jwks, e.err = jwks, nil
		case e.jwks != "":
			// Keep serving the last good keys through an outage of the
			// issuer; say so.
			r.cfg.Log.Warn("oidc: refresh failed; keeping the keys fetched before", "issuer", iss, "error", err.Error())
		default:
			if e.err == nil || e.err.Error() != err.Error() {
				r.cfg.Log.Error("oidc: discovery failed; this issuer's tokens are refused until it succeeds", "issuer", iss, "error", err.Error())
			}
			e.err = err
		}
		r.mu.Unlock()
	}
	return changed
}

func (r *Resolver) get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("GET %s: more than %d bytes", url, maxBody)
	}
	return b, nil
}

// fetch does the discovery: the configuration document, then its
// jwks_uri, which must hold at least one key.
func (r *Resolver) fetch(ctx context.Context, issuer string) (string, error) {
	if !strings.HasPrefix(issuer, "https://") && !strings.HasPrefix(issuer, "http://") {
		return "", fmt.Errorf("oidc: issuer %q is not an http(s) URL, so it cannot be discovered; give jwksUri or jwks", issuer)
	}
	conf := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	b, err := r.get(ctx, conf)
	if err != nil {
		return "", fmt.Errorf("oidc: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JwksURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("oidc: %s: not a discovery document: %v", conf, err)
	}
	// OpenID Connect Discovery 1.0 §4.3: the document's issuer must be
	// identical to the URL it was fetched under (without the trailing
	// slash §4.1 drops before appending the well-known path); a token's
	// iss must in turn be that issuer. Another value means the document
	// is some other issuer's, or a forgery, and none of its keys is used.
	if doc.Issuer != issuer && doc.Issuer != strings.TrimSuffix(issuer, "/") {
		return "", fmt.Errorf("oidc: %s names issuer %q, not %q: a discovery document must name the issuer it is fetched for (OpenID Connect Discovery 1.0 §4.3); no keys are taken from it", conf, doc.Issuer, issuer)
	}
	if doc.JwksURI == "" {
		return "", fmt.Errorf("oidc: %s names no jwks_uri", conf)
	}
	if !strings.HasPrefix(doc.JwksURI, "https://") && !strings.HasPrefix(doc.JwksURI, "http://") {
		return "", fmt.Errorf("oidc: %s: jwks_uri %q is not an http(s) URL", conf, doc.JwksURI)
	}
	kb, err := r.get(ctx, doc.JwksURI)
	if err != nil {
		return "", fmt.Errorf("oidc: keys of %s: %w", issuer, err)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(kb, &set); err != nil || len(set.Keys) == 0 {
		return "", fmt.Errorf("oidc: %s is not a key set with keys", doc.JwksURI)
	}
	return string(kb), nil
}
