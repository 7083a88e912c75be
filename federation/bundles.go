package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/wardenmesh/warden/ca"
)

// Defaults of Config.
const (
	DefaultMinRefresh = 30 * time.Second
	DefaultMaxRefresh = time.Hour
	DefaultTimeout    = 30 * time.Second
	// maxDocument bounds a fetched bundle document.
	maxDocument = 1 << 20
	// maxRedirects bounds the redirects one fetch follows.
	maxRedirects = 5
)

// Config configures Bundles.
type Config struct {
	// Local is warden's own trust domain; LocalRoots its bundle, which
	// authenticates an https_spiffe endpoint whose ID is local.
	Local         spiffeid.TrustDomain
	LocalRoots    func() []*x509.Certificate
	Relationships []*Relationship
	// Store keeps the last good bundle of each trust domain across
	// restarts; nil keeps them in memory only.
	Store Store
	// WebRoots authenticate https_web endpoints; nil: the system's.
	WebRoots *x509.CertPool
	// MinRefresh and MaxRefresh bound the refresh hint a peer publishes
	// (a hint of 0 must not make warden poll without pause).
	MinRefresh, MaxRefresh time.Duration
	Timeout                time.Duration // one fetch, redirects included
	Clock                  ca.Clock
	Log                    *slog.Logger
}

// Bundles is the set of foreign trust domains' bundles, one per
// relationship, each kept apart: fetched from its endpoint, never merged
// with another or with the local bundle. Consumers Subscribe and read the
// bundles a namespace federates with (ForNamespace).
type Bundles struct {
	cfg Config

	mu      sync.Mutex
	entries map[spiffeid.TrustDomain]*entry
	subs    []func()
	changed chan struct{} // SetRelationships changed the entries: Run starts and stops polls
}

type entry struct {
	rel      *Relationship
	bundle   *spiffebundle.Bundle // the last good one (or the bootstrap); nil before any
	from     string               // where it came from: "fetched", "stored", "bootstrap"
	success  time.Time            // last good fetch (or the stored file's time)
	lastErr  error
	lastTry  time.Time
	interval time.Duration
}

// Status is one relationship's state, for warden check and logs.
type Status struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	Profile     Profile
	Namespaces  []string
	Roots       int
	Sequence    uint64
	HasSequence bool
	From        string    // fetched, stored or bootstrap; "" when there is no bundle
	LastSuccess time.Time // zero: never fetched
	LastError   string
	Interval    time.Duration
	// Stale: no good fetch for more than three refresh intervals (or
	// none yet): the peer's roots may have moved on.
	Stale bool
}

// New loads every relationship's last good bundle (stored, else its
// bootstrap bundle). It fetches nothing: Run does.
func New(cfg Config) (*Bundles, error) {
	if cfg.Local.IsZero() {
		return nil, errors.New("federation: the local trust domain is required")
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	if cfg.MaxRefresh <= 0 {
		cfg.MaxRefresh = DefaultMaxRefresh
	}
	if cfg.MaxRefresh < cfg.MinRefresh {
		cfg.MaxRefresh = cfg.MinRefresh
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = ca.SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.LocalRoots == nil {
		cfg.LocalRoots = func() []*x509.Certificate { return nil }
	}
	b := &Bundles{cfg: cfg, entries: map[spiffeid.TrustDomain]*entry{}, changed: make(chan struct{}, 1)}
	for _, r := range cfg.Relationships {
		if r.TrustDomain == cfg.Local {
			return nil, fmt.Errorf("federation: %s is the local trust domain", r.TrustDomain)
		}
		b.entries[r.TrustDomain] = b.newEntry(r)
	}
	return b, nil
}

// newEntry is r's entry with its last good bundle: the stored one, else
// r's bootstrap bundle.
func (b *Bundles) newEntry(r *Relationship) *entry {
	e := &entry{rel: r}
	if b.cfg.Store != nil {
		stored, at, err := b.cfg.Store.Load(r.TrustDomain)
		if err != nil {
			// A damaged file is not trusted, but not fatal either:
			// the bootstrap bundle and the next fetch take over.
			b.cfg.Log.Error("federation: ignoring the stored bundle", "trustDomain", r.TrustDomain.Name(), "error", err.Error())
		} else if stored != nil {
			e.bundle, e.from, e.success = stored, "stored", at
		}
	}
	if e.bundle == nil && r.Bootstrap != nil {
		e.bundle, e.from = r.Bootstrap.Clone(), "bootstrap"
	}
	e.interval = b.interval(e.bundle)
	return e
}

// interval is the poll interval for bundle: its refresh hint within the
// bounds, DefaultRefreshHint when it has none.
func (b *Bundles) interval(bundle *spiffebundle.Bundle) time.Duration {
	d := DefaultRefreshHint
	if bundle != nil {
		if h, ok := bundle.RefreshHint(); ok {
			d = h
		}
	}
	return min(max(d, b.cfg.MinRefresh), b.cfg.MaxRefresh)
}

// Subscribe calls f (outside any lock) after a trust domain's roots
// changed.
func (b *Bundles) Subscribe(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs = append(b.subs, f)
}

// Get returns td's bundle (a copy), or nil.
func (b *Bundles) Get(td spiffeid.TrustDomain) *spiffebundle.Bundle {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entries[td]; e != nil && e.bundle != nil {
		return e.bundle.Clone()
	}
	return nil
}

// ForNamespace returns the roots of every trust domain the workloads of
// namespace ns federate with, by trust domain; never the local one.
func (b *Bundles) ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for td, e := range b.entries {
		if e.bundle != nil && e.rel.Federates(ns) && len(e.bundle.X509Authorities()) > 0 {
			out[td] = e.bundle.X509Authorities()
		}
	}
	return out
}

// ForID returns the foreign bundles of workload id: those of its
// namespace when id is a workload of the local trust domain
// (spiffe://<td>/ns/<ns>/sa/<sa>), none otherwise.
func (b *Bundles) ForID(id spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate {
	ns, ok := Namespace(id, b.cfg.Local)
	if !ok {
		return nil
	}
	return b.ForNamespace(ns)
}

// Namespace is the namespace of a workload ID of trust domain td.
func Namespace(id spiffeid.ID, td spiffeid.TrustDomain) (string, bool) {
	if id.TrustDomain() != td {
		return "", false
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", false
	}
	return parts[1], true
}

// Federates says whether namespace ns federates with td.
func (b *Bundles) Federates(ns string, td spiffeid.TrustDomain) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[td]
	return e != nil && e.rel.Federates(ns)
}

// Set is what a workload of namespace ns validates peers with: the local
// bundle (localRoots) and the bundles of the trust domains ns federates
// with, each under its own trust domain (go-spiffe's x509svid.Verify then
// picks the bundle of the peer's trust domain only).
func (b *Bundles) Set(ns string, localRoots []*x509.Certificate) *x509bundle.Set {
	set := x509bundle.NewSet(x509bundle.FromX509Authorities(b.cfg.Local, localRoots))
	for td, roots := range b.ForNamespace(ns) {
		set.Add(x509bundle.FromX509Authorities(td, roots))
	}
	return set
}

// Status reports every relationship, sorted by trust domain.
func (b *Bundles) Status() []Status {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Status
	for _, e := range b.entries {
		s := Status{TrustDomain: e.rel.TrustDomain, URL: e.rel.URL, Profile: e.rel.Profile, Namespaces: e.rel.Namespaces,
			From: e.from, LastSuccess: e.success, Interval: e.interval}
		if e.bundle != nil {
			s.Roots = len(e.bundle.X509Authorities())
			s.Sequence, s.HasSequence = e.bundle.SequenceNumber()
		}
		if e.lastErr != nil {
			s.LastError = e.lastErr.Error()
		}
		s.Stale = e.success.IsZero() || now.Sub(e.success) > 3*e.interval
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, c Status) int { return compareTD(a.TrustDomain, c.TrustDomain) })
	return out
}

func compareTD(a, b spiffeid.TrustDomain) int {
	switch {
	case a.Name() < b.Name():
		return -1
	case a.Name() > b.Name():
		return 1
	}
	return 0
}

// Run polls every relationship's endpoint until ctx is done: at once, then
// at its bundle's refresh hint (bounded); a failed poll is retried at the
// next interval, not sooner (§6.2), and the last good bundle stays. A
// relationship SetRelationships adds or changes is polled at once, one it
// removes no more.
func (b *Bundles) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	type poll struct {
		e      *entry
		cancel context.CancelFunc
	}
	polls := map[spiffeid.TrustDomain]poll{}
	resync := func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for td, p := range polls {
			if b.entries[td] != p.e {
				p.cancel()
				delete(polls, td)
			}
		}
		for td, e := range b.entries {
			if _, ok := polls[td]; ok {
				continue
			}
			pctx, cancel := context.WithCancel(ctx)
			polls[td] = poll{e: e, cancel: cancel}
			wg.Go(func() { b.poll(pctx, td, e) })
		}
	}
	resync()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		case <-b.changed:
			resync()
		}
	}
}

// poll refreshes td's entry e until ctx is done or e is replaced.
func (b *Bundles) poll(ctx context.Context, td spiffeid.TrustDomain, e *entry) {
	for {
		_ = b.Refresh(ctx, td) // logged and kept in Status
		b.mu.Lock()
		current := b.entries[td] == e
		d := e.interval
		b.mu.Unlock()
		if !current {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// Refresh fetches td's bundle once and takes it if it is good and not
// older (by sequence) than the one held.
func (b *Bundles) Refresh(ctx context.Context, td spiffeid.TrustDomain) error {
	b.mu.Lock()
	e := b.entries[td]
	b.mu.Unlock()
	if e == nil {
		return fmt.Errorf("federation: no relationship with %s", td)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	got, err := b.fetch(ctx, e.rel)
	now := b.cfg.Clock.Now()
	if err == nil {
		err = b.take(e, got, now)
	}
	b.mu.Lock()
	e.lastTry, e.lastErr = now, err
	b.mu.Unlock()
	if err != nil {
		b.cfg.Log.Warn("federation: keeping the last good bundle", "trustDomain", td.Name(), "url", e.rel.URL, "error", err.Error())
	}
	return err
}

// take makes got td's bundle unless its sequence is lower than the held
// one's (§4.2: the sequence orders bundles; a bundle without one is
// newer than any held).
func (b *Bundles) take(e *entry, got *spiffebundle.Bundle, now time.Time) error {
	b.mu.Lock()
	if b.entries[e.rel.TrustDomain] != e {
		// The relationship changed or went while this fetch ran.
		b.mu.Unlock()
		return fmt.Errorf("federation: %s: the relationship changed during the fetch; its result is dropped", e.rel.URL)
	}
	held := e.bundle
	if held != nil && e.from != "bootstrap" {
		hs, hok := held.SequenceNumber()
		gs, gok := got.SequenceNumber()
		if hok && gok && gs < hs {
			b.mu.Unlock()
			return fmt.Errorf("federation: %s served sequence %d, lower than the %d held: kept the held bundle", e.rel.URL, gs, hs)
		}
	}
	changed := held == nil || !ca.SameRoots(held.X509Authorities(), got.X509Authorities())
	seqChanged := held == nil || !sameSequence(held, got)
	e.bundle, e.from, e.success = got, "fetched", now
	e.interval = b.interval(got)
	subs := slices.Clone(b.subs)
	b.mu.Unlock()
	if (changed || seqChanged) && b.cfg.Store != nil {
		if err := b.cfg.Store.Save(e.rel.TrustDomain, got); err != nil {
			// Served from memory; a restart without the peer would
			// fall back to the older stored bundle.
			b.cfg.Log.Error("federation: could not store the bundle", "trustDomain", e.rel.TrustDomain.Name(), "error", err.Error())
		}
	} else if t, ok := b.cfg.Store.(Toucher); ok {
		if err := t.Touch(e.rel.TrustDomain, now); err != nil {
			b.cfg.Log.Warn("federation: could not record the fetch in the store", "trustDomain", e.rel.TrustDomain.Name(), "error", err.Error())
		}
	}
	if changed {
		seq, _ := got.SequenceNumber()
		b.cfg.Log.Info("federation: new bundle", "trustDomain", e.rel.TrustDomain.Name(), "roots", len(got.X509Authorities()), "sequence", seq)
		for _, f := range subs {
			f()
		}
	}
	return nil
}

// Reload takes from the store the bundles another replica fetched (the
// leader, in Kubernetes mode, where only the leader polls the peers): a
// stored bundle replaces the one held unless its sequence is lower or it
// was stored before the held one was fetched, and its time becomes the
// last good fetch. Subscribers hear of new roots.
// A store that cannot be read is logged; the bundles held stay.
func (b *Bundles) Reload() {
	if b.cfg.Store == nil {
		return
	}
	b.mu.Lock()
	entries := slices.Collect(maps.Values(b.entries))
	b.mu.Unlock()
	notify := false
	for _, e := range entries {
		td := e.rel.TrustDomain
		got, at, err := b.cfg.Store.Load(td)
		if err != nil {
			b.cfg.Log.Warn("federation: cannot read the stored bundle; keeping the one held", "trustDomain", td.Name(), "error", err.Error())
			continue
		}
		if got == nil {
			continue
		}
		b.mu.Lock()
		held := e.bundle
		if held != nil && e.from != "bootstrap" {
			hs, hok := held.SequenceNumber()
			gs, gok := got.SequenceNumber()
			// Never back in sequence; nor to a bundle stored before the
			// one held was fetched (the leader's own fetch, not yet
			// stored, of a peer that publishes no sequence).
			if (hok && gok && gs < hs) || (!at.IsZero() && at.Before(e.success)) {
				b.mu.Unlock()
				continue
			}
		}
		changed := held == nil || !ca.SameRoots(held.X509Authorities(), got.X509Authorities())
		if changed || !sameSequence(held, got) || e.from == "bootstrap" {
			e.bundle, e.from = got, "stored"
			e.interval = b.interval(got)
		}
		if at.After(e.success) {
			e.success = at
		}
		b.mu.Unlock()
		if changed {
			seq, _ := got.SequenceNumber()
			b.cfg.Log.Info("federation: new bundle from the store", "trustDomain", td.Name(), "roots", len(got.X509Authorities()), "sequence", seq)
			notify = true
		}
	}
	if notify {
		b.mu.Lock()
		subs := slices.Clone(b.subs)
		b.mu.Unlock()
		for _, f := range subs {
			f()
		}
	}
}

// Follow runs Reload every interval until ctx is done.
func (b *Bundles) Follow(ctx context.Context, every time.Duration) error {
	for {
		b.Reload()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func sameSequence(a, b *spiffebundle.Bundle) bool {
	as, aok := a.SequenceNumber()
	bs, bok := b.SequenceNumber()
	return aok == bok && as == bs
}

// fetch GETs r's bundle: the endpoint authenticated by its profile, HTTP
// status 200 required (go-spiffe's federation.FetchBundle reads any
// answer's body), at most maxDocument bytes, the document checked as
// SPIRE checks it, and at least one X.509 root. Redirects to valid
// endpoint URLs are followed under the same TLS rules, for this fetch
// only (§5.2.1.4, §5.2.2.4): the next fetch starts at the configured URL.
func (b *Bundles) fetch(ctx context.Context, r *Relationship) (*spiffebundle.Bundle, error) {
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	switch r.Profile {
	case HTTPSWeb:
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: b.cfg.WebRoots}
	case HTTPSSPIFFE:
		tr.TLSClientConfig = tlsconfig.TLSClientConfig(endpointSource{b: b, rel: r}, tlsconfig.AuthorizeID(r.EndpointID))
		tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	default:
		return nil, fmt.Errorf("federation: profile %q", r.Profile)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: b.cfg.Timeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			return fmt.Errorf("more than %d redirects", maxRedirects)
		}
		if err := checkURL(req.URL.String()); err != nil {
			return fmt.Errorf("redirected to an invalid bundle endpoint URL: %w", err)
		}
		if resp := req.Response; resp != nil && (resp.StatusCode == http.StatusMovedPermanently || resp.StatusCode == http.StatusPermanentRedirect) {
			b.cfg.Log.Warn("federation: the bundle endpoint redirects permanently; warden follows it for this fetch only and keeps the configured URL (update the relationship if the endpoint moved)",
				"trustDomain", r.TrustDomain.Name(), "url", r.URL, "to", req.URL.String())
		}
		return nil
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", r.URL, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("federation: GET %s: the bundle endpoint answered %s", r.URL, resp.Status)
	}
	doc, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.URL, err)
	}
	if len(doc) > maxDocument {
		return nil, fmt.Errorf("federation: GET %s: the bundle is larger than %d bytes", r.URL, maxDocument)
	}
	if err := CheckDocument(doc); err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.URL, err)
	}
	got, err := spiffebundle.Parse(r.TrustDomain, doc)
	if err != nil {
		return nil, fmt.Errorf("federation: GET %s: %w", r.URL, err)
	}
	if len(got.X509Authorities()) == 0 {
		return nil, fmt.Errorf("federation: GET %s: the bundle holds no X.509 root", r.URL)
	}
	return got, nil
}

// endpointSource authenticates an https_spiffe endpoint (§5.2.2.4): with
// the latest bundle of the endpoint's trust domain, the relationship's own
// (bootstrapped once) when it is self-serving, the local bundle when the
// endpoint is local, another relationship's otherwise.
type endpointSource struct {
	b   *Bundles
	rel *Relationship
}

var _ x509bundle.Source = endpointSource{}

func (s endpointSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.rel.EndpointID.TrustDomain() {
		return nil, fmt.Errorf("federation: the endpoint presented an SVID of %s, not of %s", td, s.rel.EndpointID.TrustDomain())
	}
	if td == s.b.cfg.Local {
		return x509bundle.FromX509Authorities(td, s.b.cfg.LocalRoots()), nil
	}
	if got := s.b.Get(td); got != nil {
		return got.X509Bundle(), nil
	}
	return nil, fmt.Errorf("federation: no bundle of %s to authenticate the endpoint %s yet", td, s.rel.EndpointID)
}
