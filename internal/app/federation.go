package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
)

// federationFlags are serve's SPIFFE Federation flags (docs/federation.md).
type federationFlags struct {
	listen      string // the bundle endpoint; empty: none
	profile     string
	cert, key   string // https_web: the operator's certificate and key
	refreshHint time.Duration
	file        string // the relationships; empty: none
	minRefresh  time.Duration
}

func (f *federationFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "bundle-endpoint-listen", "", "serve the trust domain's SPIFFE bundle (SPIFFE Federation) over HTTPS here, e.g. 0.0.0.0:8443, to every path; empty: off")
	fs.StringVar(&f.profile, "bundle-endpoint-profile", string(federation.HTTPSSPIFFE), "the bundle endpoint's profile: https_spiffe (presents warden's own SVID, spiffe://<trust domain>/ns/warden-system/sa/warden) or https_web (presents --bundle-endpoint-cert)")
	fs.StringVar(&f.cert, "bundle-endpoint-cert", "", "https_web: PEM certificate chain the bundle endpoint presents (a Web PKI certificate for the endpoint URL's host); re-read when it changes")
	fs.StringVar(&f.key, "bundle-endpoint-key", "", "https_web: the PEM private key of --bundle-endpoint-cert")
	fs.DurationVar(&f.refreshHint, "bundle-endpoint-refresh-hint", federation.DefaultRefreshHint, "spiffe_refresh_hint the bundle endpoint publishes (whole seconds); a root rotation activates no sooner than this after publishing")
	fs.StringVar(&f.file, "federation-file", "", "the federation relationships (foreign trust domains, their bundle endpoints, the namespaces that federate with each), YAML, re-read every second; their last good bundles are kept in <data-dir>/federation (standalone) or ConfigMap warden-federation-bundles (Kubernetes)")
	fs.DurationVar(&f.minRefresh, "federation-min-refresh", federation.DefaultMinRefresh, "poll a foreign bundle endpoint no more often than this, whatever refresh hint it publishes (at most hourly, whatever it publishes); Kubernetes: how often every replica reads the bundles the leader stored")
}

// check refuses inconsistent flags before anything is read or written.
func (f *federationFlags) check() error {
	if f.minRefresh < time.Second || f.minRefresh > time.Hour {
		return fmt.Errorf("%w: --federation-min-refresh must be from 1s to 1h", errUsage)
	}
	if f.listen == "" {
		if f.cert != "" || f.key != "" {
			return fmt.Errorf("%w: --bundle-endpoint-cert and --bundle-endpoint-key need --bundle-endpoint-listen", errUsage)
		}
		return nil
	}
	if f.refreshHint < time.Second {
		return fmt.Errorf("%w: --bundle-endpoint-refresh-hint must be at least 1s", errUsage)
	}
	switch federation.Profile(f.profile) {
	case federation.HTTPSSPIFFE:
		if f.cert != "" || f.key != "" {
			return fmt.Errorf("%w: --bundle-endpoint-cert and --bundle-endpoint-key are for --bundle-endpoint-profile https_web; https_spiffe presents warden's own SVID", errUsage)
		}
	case federation.HTTPSWeb:
		if f.cert == "" || f.key == "" {
			return fmt.Errorf("%w: --bundle-endpoint-profile https_web needs --bundle-endpoint-cert and --bundle-endpoint-key (a certificate for the endpoint URL's host)", errUsage)
		}
		if _, err := tls.LoadX509KeyPair(f.cert, f.key); err != nil {
			return fmt.Errorf("%w: --bundle-endpoint-cert/--bundle-endpoint-key: %v", errUsage, err)
		}
	default:
		return fmt.Errorf("%w: --bundle-endpoint-profile %q: want https_spiffe or https_web", errUsage, f.profile)
	}
	return nil
}

// checkFile refuses a relationships file that does not load before
// anything is read or written.
func (f *federationFlags) checkFile(trustDomain string) error {
	if f.file == "" {
		return nil
	}
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return err
	}
	if _, err := federation.LoadFile(f.file, td); err != nil {
		return fmt.Errorf("%w: --federation-file: %v", errUsage, err)
	}
	return nil
}

// wireBundleEndpoint makes the bundle endpoint a consumer of the trust
// bundle (rotation counts it: a new root activates once the endpoint has
// served it for one refresh hint) and its HTTPS server.
func (s *controlPlane) wireBundleEndpoint(f federationFlags) error {
	if f.listen == "" {
		return nil
	}
	b := s.authority.Bundles()
	ep, err := federation.NewEndpoint(federation.EndpointConfig{TrustDomain: s.authority.Bundle().TrustDomain(), RefreshHint: f.refreshHint}, b.Roots())
	if err != nil {
		return err
	}
	s.consumers.Add(bundle.Func{Kind: "bundle-endpoint", In: bundle.PerReplica, OnChange: ep.Changed, Holders: ep.Missing})
	ep.Changed(b.Roots()) // a change between NewEndpoint and Add
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.NoClientCert}
	if federation.Profile(f.profile) == federation.HTTPSWeb {
		kp := &keyPair{cert: f.cert, key: f.key, log: s.log}
		cfg.GetCertificate = kp.get
	} else {
		// The CA port's certificate: an X509-SVID with the control
		// plane's ID, renewed and following a rotation like it.
		cfg.GetCertificate = s.serving.GetCertificate
	}
	s.bundleEP = &http.Server{
		Handler:           ep,
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// keyPair is an operator's certificate and key, read again when either
// file changes; a bad pair is reported once and the last good one kept.
type keyPair struct {
	cert, key string
	log       *slog.Logger

	mu      sync.Mutex
	current *tls.Certificate
	stamp   string
	bad     string
}

func (k *keyPair) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	stamp := ""
	for _, p := range []string{k.cert, k.key} {
		fi, err := os.Stat(p)
		if err != nil {
			stamp += "missing;"
			continue
		}
		stamp += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	if stamp == k.stamp && k.current != nil {
		return k.current, nil
	}
	c, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.current == nil {
			return nil, fmt.Errorf("bundle endpoint certificate: %w", err)
		}
		if err.Error() != k.bad {
			k.bad = err.Error()
			k.log.Error("bundle endpoint: the new certificate or key does not load; presenting the previous one", "cert", k.cert, "error", k.bad)
		}
		return k.current, nil
	}
	k.current, k.stamp, k.bad = &c, stamp, ""
	return k.current, nil
}

// listenBundleEndpoint binds the endpoint's port (after everything is
// wired, like the other ports).
func (s *controlPlane) listenBundleEndpoint(addr string) error {
	if s.bundleEP == nil {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	s.bundleLis = l
	return nil
}

// wireFederation loads the relationships (--federation-file) and their
// last good bundles: from the data directory in standalone mode, where
// polling the peers is a task; from ConfigMap warden-federation-bundles
// in Kubernetes mode, where the leader alone polls and stores (its Lead)
// and every replica reads the ConfigMap every --federation-min-refresh.
// Kubernetes mode wires the bundles even with no file: the
// ClusterFederatedTrustDomain objects, created at any time, add theirs.
func (s *controlPlane) wireFederation(f serveFlags, td spiffeid.TrustDomain) error {
	file := f.federation.file
	if file == "" && s.fedObjects == nil {
		return nil
	}
	var rels []*federation.Relationship
	if file != "" {
		var err error
		if rels, err = federation.LoadFile(file, td); err != nil {
			return err
		}
	}
	store := s.fedStore
	if store == nil {
		store = &federation.DirStore{Dir: filepath.Join(f.dataDir, federationDir)}
	}
	b, err := federation.New(federation.Config{
		Local: td, LocalRoots: s.authority.Bundles().Roots, Relationships: rels,
		Store: store, MinRefresh: f.federation.minRefresh, Log: s.log,
	})
	if err != nil {
		return err
	}
	for _, st := range b.Status() {
		s.log.Info("federation relationship", "trustDomain", st.TrustDomain.Name(), "url", st.URL, "profile", string(st.Profile),
			"namespaces", strings.Join(st.Namespaces, ","), "bundle", cmp.Or(st.From, "none yet"), "roots", st.Roots)
	}
	s.federated = b
	set := b.SetRelationships
	if w := s.fedObjects; w != nil {
		// The file's relationships and the objects' together: the file
		// hands its set to the watcher, which hands the union on.
		w.Set = b.SetRelationships
		if _, err := w.SetFile(rels); err != nil {
			return err
		}
		set = w.SetFile
		s.tasks = append(s.tasks, w.Run)
	}
	if file != "" {
		s.tasks = append(s.tasks, func(ctx context.Context) error {
			watchRelationships(ctx, file, td, set, time.Second, s.log)
			return nil
		})
	}
	if s.fedStore != nil {
		s.tasks = append(s.tasks, func(ctx context.Context) error { return b.Follow(ctx, f.federation.minRefresh) })
	} else {
		s.tasks = append(s.tasks, b.Run)
	}
	return nil
}

// watchRelationships reads the relationships file every interval until
// ctx is done and hands a changed set to set (the bundles, or in
// Kubernetes mode the objects' watcher, which adds theirs): a file that
// does not load is logged (once per distinct error) and the
// relationships held stay.
func watchRelationships(ctx context.Context, file string, td spiffeid.TrustDomain, set func([]*federation.Relationship) (bool, error), interval time.Duration, log *slog.Logger) {
	lastErr := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rels, err := federation.LoadFile(file, td)
		if err == nil {
			var changed bool
			if changed, err = set(rels); err == nil && changed {
				var names []string
				for _, r := range rels {
					names = append(names, r.TrustDomain.Name())
				}
				log.Info("federation relationships reloaded", "file", file, "trustDomains", strings.Join(names, ","))
			}
		}
		if err != nil {
			if err.Error() != lastErr {
				log.Error("federation relationships not reloaded; keeping the previous ones", "file", file, "error", err.Error())
			}
			lastErr = err.Error()
			continue
		}
		lastErr = ""
	}
}

// federationDir holds the foreign bundles in the data directory.
const federationDir = "federation"

// relationshipStatus is a relationship's state as serve's
// /debug/federation reports it to warden check.
type relationshipStatus struct {
	TrustDomain string    `json:"trustDomain"`
	URL         string    `json:"url"`
	Roots       int       `json:"roots"`
	Sequence    *uint64   `json:"sequence,omitempty"`
	From        string    `json:"from"`
	LastSuccess time.Time `json:"lastSuccess"`
	LastError   string    `json:"lastError,omitempty"`
	Interval    string    `json:"interval"`
	Stale       bool      `json:"stale"`
}

func federationStatus(sts []federation.Status) []relationshipStatus {
	out := []relationshipStatus{}
	for _, st := range sts {
		r := relationshipStatus{TrustDomain: st.TrustDomain.Name(), URL: st.URL, Roots: st.Roots, From: st.From,
			LastSuccess: st.LastSuccess, LastError: st.LastError, Interval: st.Interval.String(), Stale: st.Stale}
		if st.HasSequence {
			r.Sequence = &st.Sequence
		}
		out = append(out, r)
	}
	return out
}

// checkFederation asks a running serve for its relationships: a stale one
// (no good fetch for three refresh intervals) is an error naming the
// endpoint, its last error and the bundle still in use. A serve with no
// relationships (404) adds nothing.
func checkFederation(ctx context.Context, addr string) []check.Result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/federation", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return []check.Result{{Check: "federation", Status: check.Error, Message: fmt.Sprintf("warden serve at %s: %v", addr, err)}}
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	var sts []relationshipStatus
	if resp.StatusCode != http.StatusOK {
		return []check.Result{{Check: "federation", Status: check.Error, Message: fmt.Sprintf("warden serve at %s: /debug/federation: %s", addr, resp.Status)}}
	}
	if err := json.NewDecoder(resp.Body).Decode(&sts); err != nil {
		return []check.Result{{Check: "federation", Status: check.Error, Message: fmt.Sprintf("warden serve at %s: /debug/federation: %v", addr, err)}}
	}
	var out []check.Result
	for _, st := range sts {
		held := "no bundle"
		if st.Sequence != nil {
			held = fmt.Sprintf("the bundle of sequence %d (%d roots, %s)", *st.Sequence, st.Roots, st.From)
		} else if st.From != "" {
			held = fmt.Sprintf("a bundle of %d roots (%s)", st.Roots, st.From)
		}
		if !st.Stale {
			out = append(out, check.Result{Check: "federation", Status: check.OK, Message: fmt.Sprintf("%s: %s, fetched %s from %s", st.TrustDomain, held, st.LastSuccess.UTC().Format(time.RFC3339), st.URL)})
			continue
		}
		since := "never fetched"
		if !st.LastSuccess.IsZero() {
			since = "no good fetch since " + st.LastSuccess.UTC().Format(time.RFC3339)
		}
		out = append(out, check.Result{Check: "federation", Status: check.Error, Message: fmt.Sprintf("%s: stale relationship: %s from %s (polled every %s; last error: %s); workloads still use %s: fix the endpoint or the relationship (docs/federation.md)",
			st.TrustDomain, since, st.URL, st.Interval, cmp.Or(st.LastError, "none"), held)})
	}
	return out
}
