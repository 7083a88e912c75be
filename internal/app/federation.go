package app

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/bundle"
)

// federationFlags are serve's SPIFFE Federation flags (docs/federation.md).
type federationFlags struct {
	listen      string // the bundle endpoint; empty: none
	profile     string
	cert, key   string // https_web: the operator's certificate and key
	refreshHint time.Duration
}

func (f *federationFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "bundle-endpoint-listen", "", "serve the trust domain's SPIFFE bundle (SPIFFE Federation) over HTTPS here, e.g. 0.0.0.0:8443, to every path; empty: off")
	fs.StringVar(&f.profile, "bundle-endpoint-profile", string(federation.HTTPSSPIFFE), "the bundle endpoint's profile: https_spiffe (presents warden's own SVID, spiffe://<trust domain>/ns/warden-system/sa/warden) or https_web (presents --bundle-endpoint-cert)")
	fs.StringVar(&f.cert, "bundle-endpoint-cert", "", "https_web: PEM certificate chain the bundle endpoint presents (a Web PKI certificate for the endpoint URL's host); re-read when it changes")
	fs.StringVar(&f.key, "bundle-endpoint-key", "", "https_web: the PEM private key of --bundle-endpoint-cert")
	fs.DurationVar(&f.refreshHint, "bundle-endpoint-refresh-hint", federation.DefaultRefreshHint, "spiffe_refresh_hint the bundle endpoint publishes (whole seconds); a root rotation activates no sooner than this after publishing")
}

// check refuses inconsistent flags before anything is read or written.
func (f *federationFlags) check() error {
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
