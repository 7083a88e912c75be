// Package vault is a ca.Upstream on HashiCorp Vault's PKI secrets engine:
// Vault holds the root, warden sends the CSR of its own intermediate key to
// <mount>/root/sign-intermediate and signs workload certificates itself,
// so Vault is asked once per intermediate lifetime, never per workload.
//
// The client logs in with a token, AppRole or Kubernetes auth, keeps its
// token alive with vault/api's lifetime watcher and logs in again when
// renewal fails (Run). It reads nothing from the environment: the caller
// passes every setting (warden's command line maps VAULT_ADDR and friends
// onto Config).
package vault

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/wardenmesh/warden/ca"
)

// Defaults for Config.
const (
	DefaultPKIMount = "pki"
	DefaultTimeout  = 30 * time.Second
	DefaultRetryMin = time.Second
	DefaultRetryMax = 2 * time.Minute
)

// Config holds the Vault connection and PKI settings.
type Config struct {
	Address       string // Vault's URL, e.g. https://vault.example.com:8200 (required)
	CACert        string // PEM file with the CAs that issued Vault's TLS certificate
	TLSServerName string // name to verify in Vault's TLS certificate, when it differs from Address's host
	Namespace     string // Vault Enterprise namespace (X-Vault-Namespace), empty for none
	PKIMount      string // the PKI secrets engine's mount path; default "pki"
	// SignPath is the endpoint that signs the intermediate's CSR; default
	// "<PKIMount>/root/sign-intermediate" (for a named issuer:
	// "<PKIMount>/issuer/<ref>/sign-intermediate").
	SignPath string
	Auth     Auth          // how to log in (required)
	Timeout  time.Duration // per request; default DefaultTimeout
	// RetryMin and RetryMax bound the backoff between failed logins in Run
	// when Vault cannot be reached.
	RetryMin, RetryMax time.Duration
	// CredentialRetry is the wait before credentials Vault refused are
	// sent again (default DefaultCredentialRetry); new ones are sent at
	// once.
	CredentialRetry time.Duration
	Log             *slog.Logger
}

// Upstream signs warden's intermediates with Vault's PKI engine.
type Upstream struct {
	cfg    Config
	client *api.Client

	mu      sync.Mutex
	secret  *api.Secret // the current login; Auth holds the token
	loginAt time.Time   // when it was made
	// refused is the digest of the credentials Vault last refused, and
	// its answer: they are not sent again until they change (lockout).
	refused    [32]byte
	refusedErr error
	// sent is the digest of the credentials last sent: a token file is
	// watched for a change from them.
	sent [32]byte

	logins atomic.Uint64 // login attempts (tests: never a lockout)

	issuerRoots map[string]*x509.Certificate // by issuer ID (Issuers)
}

// Logins counts the login attempts made, successful or not.
func (u *Upstream) Logins() uint64 { return u.logins.Load() }

// DefaultCredentialRetry is how long warden waits before trying
// credentials Vault refused again, unless they change meanwhile: Vault
// locks a role out after a few failed logins (5 in 15 minutes by
// default), and a locked-out role is refused even with good credentials.
const DefaultCredentialRetry = 5 * time.Minute

var _ ca.Upstream = (*Upstream)(nil)

// New connects to Vault and logs in. A refused login (wrong role, revoked
// token, bad secret) is an error naming the auth method and Vault's
// answer; nothing is retried here.
func New(ctx context.Context, cfg Config) (*Upstream, error) {
	if cfg.Address == "" {
		return nil, errors.New("vault: address is required")
	}
	if !strings.HasPrefix(cfg.Address, "https://") && !strings.HasPrefix(cfg.Address, "http://") {
		return nil, fmt.Errorf("vault: address %q: want an http:// or https:// URL", cfg.Address)
	}
	if cfg.Auth == nil {
		return nil, errors.New("vault: an auth method is required")
	}
	if err := cfg.Auth.check(); err != nil {
		return nil, err
	}
	cfg.PKIMount = strings.Trim(cfg.PKIMount, "/")
	if cfg.PKIMount == "" {
		cfg.PKIMount = DefaultPKIMount
	}
	cfg.SignPath = strings.Trim(cfg.SignPath, "/")
	if cfg.SignPath == "" {
		cfg.SignPath = cfg.PKIMount + "/root/sign-intermediate"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.CredentialRetry == 0 {
		cfg.CredentialRetry = DefaultCredentialRetry
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	client, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	u := &Upstream{cfg: cfg, client: client}
	if err := u.login(ctx); err != nil {
		return nil, err
	}
	return u, nil
}

// newClient builds a vault/api client from cfg alone: whatever
// api.DefaultConfig picked up from VAULT_* variables is overridden.
func newClient(cfg Config) (*api.Client, error) {
	vc := api.DefaultConfig()
	if vc.Error != nil {
		return nil, fmt.Errorf("vault: client config: %w", vc.Error)
	}
	vc.Address = cfg.Address
	vc.AgentAddress = ""
	vc.Timeout = cfg.Timeout
	vc.MaxRetries = 0 // warden retries on its own schedule
	vc.Limiter = nil
	if err := vc.ConfigureTLS(&api.TLSConfig{CACert: cfg.CACert, TLSServerName: cfg.TLSServerName}); err != nil {
		return nil, fmt.Errorf("vault: TLS (CA cert %q): %w", cfg.CACert, err)
	}
	c, err := api.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	c.ClearToken()
	c.SetHeaders(http.Header{})
	if cfg.Namespace != "" {
		c.SetNamespace(cfg.Namespace)
	}
	return c, nil
}

// login authenticates with the configured method and installs the token.
func (u *Upstream) login(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	creds := u.cfg.Auth.credentials()
	u.mu.Lock()
	if u.refusedErr != nil && creds == u.refused {
		err := u.refusedErr
		u.mu.Unlock()
		return fmt.Errorf("not logging in again with the credentials Vault refused (to stay clear of its lockout; new ones are used as soon as they are written): %w", err)
	}
	u.sent = creds
	u.mu.Unlock()
	u.logins.Add(1)
	s, err := u.cfg.Auth.login(ctx, u.client, u.endpoint())
	if err != nil {
		if errors.Is(err, ErrCredentials) {
			u.mu.Lock()
			u.refused, u.refusedErr = creds, err
			u.mu.Unlock()
		}
		return err
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("vault: %s: Vault returned no token", u.cfg.Auth)
	}
	u.mu.Lock()
	u.secret, u.loginAt, u.refusedErr = s, time.Now(), nil
	u.mu.Unlock()
	u.client.SetToken(s.Auth.ClientToken)
	u.cfg.Log.Info("logged in to Vault", "addr", u.cfg.Address, "auth", u.cfg.Auth.String(),
		"policies", strings.Join(s.Auth.Policies, ","), "ttl", time.Duration(s.Auth.LeaseDuration)*time.Second, "renewable", s.Auth.Renewable)
	if slices.Contains(s.Auth.Policies, "root") {
		u.cfg.Log.Warn("warden is logged in to Vault with the root policy: give it a token or role limited to the PKI paths it signs with (docs/vault.md, Policy)",
			"auth", u.cfg.Auth.String())
	}
	return nil
}

// freshLogin is how old a login must be before a refused request is
// blamed on an expired token and retried after logging in again.
const freshLogin = 10 * time.Second

func (u *Upstream) endpoint() endpoint { return endpoint{addr: u.cfg.Address, caCert: u.cfg.CACert} }

func (u *Upstream) loginAge() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return time.Since(u.loginAt)
}

func (u *Upstream) current() *api.Secret {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.secret
}

// Run keeps the login alive until ctx is done: it renews the token with
// vault/api's lifetime watcher and, when renewal fails or the token
// reaches its max TTL, logs in again, retrying with capped backoff (Vault
// may be down meanwhile; signing goes on with the current intermediate).
// A login that cannot be renewed is replaced at two thirds of its TTL.
// With token auth "logging in" is checking the token, and a token file is
// checked every second: a new token written there replaces the current
// one at once (one Vault refuses is reported, and the current one kept).
func (u *Upstream) Run(ctx context.Context) error {
	for {
		s := u.current()
		var err error
		if s.Auth.Renewable {
			err = u.watch(ctx, s)
		} else {
			err = u.hold(ctx, s)
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errNewToken) {
			if err = u.login(ctx); err == nil {
				continue
			}
			if errors.Is(err, ErrCredentials) {
				u.cfg.Log.Error("Vault refused the new token; warden keeps using the current one", "auth", u.cfg.Auth.String(), "error", err.Error())
				continue
			}
		}
		u.cfg.Log.Warn("Vault token renewal stopped; logging in again", "auth", u.cfg.Auth.String(), "error", err.Error())
		u.relogin(ctx)
	}
}

// errNewToken ends a login's watch when its token file holds another
// token.
var errNewToken = errors.New("a new token was written to the token file")

// watch renews s until that fails, a new token is written to the token
// file, or ctx is done.
func (u *Upstream) watch(ctx context.Context, s *api.Secret) error {
	w, err := u.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: s, RenewBehavior: api.RenewBehaviorErrorOnErrors})
	if err != nil {
		return err
	}
	go w.Start()
	defer w.Stop()
	tick, stop := u.tokenFileTicker()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.DoneCh():
			if err == nil {
				err = errors.New("token reached its maximum TTL")
			}
			return err
		case r := <-w.RenewCh():
			u.cfg.Log.Debug("renewed the Vault token", "ttl", time.Duration(r.Secret.Auth.LeaseDuration)*time.Second)
		case <-tick:
			if u.newToken() {
				return errNewToken
			}
		}
	}
}

// hold waits, for a login that cannot be renewed, until it must be
// replaced: at two thirds of its TTL when the auth method can log in
// again, at its end for a token (only a new one in the token file can
// replace it), when a new token is written to the file, or when ctx is
// done.
func (u *Upstream) hold(ctx context.Context, s *api.Secret) error {
	var end <-chan time.Time
	if ttl := time.Duration(s.Auth.LeaseDuration) * time.Second; ttl > 0 {
		if t, ok := u.cfg.Auth.(Token); ok {
			where := "restart warden with a new one"
			if t.File != "" {
				where = "write a new one to " + t.File
			}
			u.cfg.Log.Warn("the Vault token is not renewable: "+where+" before it expires", "ttl", ttl)
			end = time.After(ttl)
		} else {
			end = time.After(ttl * 2 / 3)
		}
	}
	tick, stop := u.tokenFileTicker()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end:
			return errors.New("the token cannot be renewed and its TTL is over")
		case <-tick:
			if u.newToken() {
				return errNewToken
			}
		}
	}
}

// tokenFileTicker ticks every second with token auth from a file, and
// never otherwise: AppRole and Kubernetes credentials are read at each
// login, but a new secret ID or service-account token does not call for
// one (a secret ID may be good for one login only).
func (u *Upstream) tokenFileTicker() (<-chan time.Time, func()) {
	if t, ok := u.cfg.Auth.(Token); !ok || t.File == "" {
		return nil, func() {}
	}
	tick := time.NewTicker(time.Second)
	return tick.C, tick.Stop
}

// newToken reports whether the token file holds other credentials than
// those last sent.
func (u *Upstream) newToken() bool {
	creds := u.cfg.Auth.credentials()
	u.mu.Lock()
	defer u.mu.Unlock()
	if creds == u.sent {
		return false
	}
	u.cfg.Log.Info("a new Vault token was written to the token file; checking it", "auth", u.cfg.Auth.String())
	return true
}

// relogin logs in until it works or ctx is done. When Vault cannot be
// reached it retries with capped backoff; when Vault refuses the
// credentials it waits Config.CredentialRetry, or until the credentials change
// (a new secret ID written), so that it never walks into Vault's lockout.
func (u *Upstream) relogin(ctx context.Context) {
	d := u.cfg.RetryMin
	for attempt := 1; ; attempt++ {
		sent := u.cfg.Auth.credentials()
		err := u.login(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrCredentials) {
			u.cfg.Log.Error("Vault refused warden's credentials; waiting for new ones (or retrying later, to stay clear of Vault's lockout)",
				"auth", u.cfg.Auth.String(), "attempt", attempt, "retryIn", u.cfg.CredentialRetry, "error", err.Error())
			changed, ok := u.waitForCredentials(ctx, sent, u.cfg.CredentialRetry)
			if !ok {
				return
			}
			if !changed {
				// The wait is over: the same credentials may be sent once
				// more (Vault's role may have been fixed or unlocked).
				u.mu.Lock()
				u.refusedErr = nil
				u.mu.Unlock()
			}
			continue
		}
		u.cfg.Log.Warn("Vault login failed; retrying", "auth", u.cfg.Auth.String(), "attempt", attempt, "retryIn", d, "error", err.Error())
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		d = min(2*d, u.cfg.RetryMax)
	}
}

// waitForCredentials waits until the credentials differ from sent
// (changed) or max has passed; ok is false when ctx ended.
func (u *Upstream) waitForCredentials(ctx context.Context, sent [32]byte, max time.Duration) (changed, ok bool) {
	deadline := time.After(max)
	tick := time.NewTicker(min(time.Second, max))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, false
		case <-deadline:
			return false, true
		case <-tick.C:
			if u.cfg.Auth.credentials() != sent {
				u.cfg.Log.Info("new Vault credentials found; logging in", "auth", u.cfg.Auth.String())
				return true, true
			}
		}
	}
}

// SignIntermediate implements ca.Upstream: Vault signs req.CSR as a CA
// (path length 0: it signs only workloads) and the trust bundle is the
// mount's root. With req.Under, the issuer under that root signs
// (signUnder), whatever the sign path's issuer is now.
func (u *Upstream) SignIntermediate(ctx context.Context, req ca.IntermediateRequest) (*ca.UpstreamChain, error) {
	csr, err := ca.ParseCSR(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	body := map[string]any{
		"csr":                  string(req.CSR),
		"common_name":          csr.Subject.CommonName,
		"use_csr_values":       true,
		"exclude_cn_from_sans": true,
		"max_path_length":      0,
		"format":               "pem",
	}
	if req.TTL > 0 {
		body["ttl"] = fmt.Sprintf("%ds", int64(req.TTL/time.Second))
	}
	asked := time.Now()
	path, notUnder := u.cfg.SignPath, ""
	var s *api.Secret
	if req.Under != nil {
		if s, path, notUnder, err = u.signUnder(ctx, req.Under, body); err != nil {
			return nil, err
		}
	}
	if s == nil {
		path = u.cfg.SignPath
		if s, err = u.sign(ctx, path, body); err != nil {
			return nil, err
		}
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: sign intermediate at %s: empty response", path)
	}
	cert, chain, err := parseSignResponse(s.Data, csr)
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w", path, err)
	}
	var roots []*x509.Certificate
	if req.Under != nil && notUnder == "" {
		// Never wider than asked: the trust bundle of an intermediate
		// asked under a root is that root, and it must chain to it.
		top := cert
		if len(chain) > 0 {
			top = chain[len(chain)-1]
		}
		if top.CheckSignatureFrom(req.Under) != nil {
			return nil, fmt.Errorf("vault: %s signed an intermediate that does not chain to the root asked for (sha256 %s)", path, ca.Fingerprint(req.Under))
		}
		roots = []*x509.Certificate{req.Under}
	} else if roots, err = u.Roots(ctx); err != nil {
		return nil, err
	}
	resp := &ca.UpstreamChain{Cert: cert, Chain: chain, Roots: roots, NotUnder: notUnder}
	if req.TTL > 0 && cert.NotAfter.Before(asked.Add(req.TTL-min(req.TTL/10, time.Minute))) {
		resp.Shortened = u.shortened(cert, append(append([]*x509.Certificate{}, chain...), roots...), req.TTL)
	}
	return resp, nil
}

// sign writes the CSR's body to path, logging in again once if Vault
// refuses a token that may have expired since the last renewal, and
// says what went wrong, naming the fix.
func (u *Upstream) sign(ctx context.Context, path string, body map[string]any) (*api.Secret, error) {
	s, err := u.write(ctx, path, body)
	var relogin error
	if err != nil && isForbidden(err) && !isStatic(u.cfg.Auth) && (u.loginAge() > freshLogin || invalidToken(err)) {
		// The token may have been revoked or expired between renewals;
		// a fresh one that is refused is a policy or path problem.
		if relogin = u.login(ctx); relogin == nil {
			s, err = u.write(ctx, path, body)
		}
	}
	if err == nil {
		return s, nil
	}
	if msg, down := u.endpoint().down(err); down != nil {
		return nil, fmt.Errorf("vault: sign intermediate: %s%w", msg, errSuffix(down))
	}
	msg := fmt.Sprintf("vault: sign intermediate at %s: %s", path, describe(err))
	switch {
	case relogin != nil:
		msg += "; logging in again failed: " + relogin.Error()
	case invalidToken(err):
		msg += ": warden's Vault token expired or was revoked"
	case isForbidden(err) && path != u.cfg.SignPath:
		msg += fmt.Sprintf(": warden's Vault token may not write %s; grant update on path %q in warden's policy (docs/vault.md, Policy)", path, u.cfg.PKIMount+"/issuer/+/sign-intermediate")
	case isForbidden(err):
		msg += fmt.Sprintf(": warden's Vault token may not write %s; check the PKI mount (--vault-pki-mount %s, --vault-sign-path) and that warden's policy allows update there (docs/vault.md, Policy)", path, u.cfg.PKIMount)
	}
	return nil, &signError{msg: msg, err: err}
}

// signError keeps Vault's answer under the message.
type signError struct {
	msg string
	err error
}

func (e *signError) Error() string { return e.msg }
func (e *signError) Unwrap() error { return e.err }

// shortened says why Vault signed cert for less than ttl: it never signs
// past its issuing CA's expiry, and otherwise caps lifetimes at the PKI
// mount's max_lease_ttl (the system's, 768h by default, when the mount
// sets none).
func (u *Upstream) shortened(cert *x509.Certificate, above []*x509.Certificate, ttl time.Duration) string {
	for _, c := range above {
		if cert.CheckSignatureFrom(c) == nil && !cert.NotAfter.Before(c.NotAfter) {
			return fmt.Sprintf("Vault does not sign past the expiry of its issuing CA %s (%s); renew or rotate that CA", c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return fmt.Sprintf("Vault caps it at the max_lease_ttl of PKI mount %s: raise that to at least the %s warden asks for (vault secrets tune -max-lease-ttl=%s %s), or ask for less with --vault-intermediate-ttl",
		u.cfg.PKIMount, shortDuration(ttl), shortDuration(ttl), u.cfg.PKIMount)
}

// shortDuration writes d as Vault's CLI users do: 168h, not 168h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// parseSignResponse reads the data of a sign-intermediate response for
// csr: "certificate" (PEM) must be a CA certificate for the CSR's public
// key; the certificates above it come from "ca_chain" (a list of PEM
// strings) or, when that is absent or empty, "issuing_ca". The returned
// chain leaves out roots and the certificate itself, which Vault's
// ca_chain may start with. It is pure, for fuzzing (FuzzSignResponse).
func parseSignResponse(data map[string]any, csr *x509.CertificateRequest) (*x509.Certificate, []*x509.Certificate, error) {
	if data == nil {
		return nil, nil, errors.New("empty response")
	}
	cert, err := onePEM(data["certificate"])
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	if !sameKey(csr.PublicKey, cert.PublicKey) {
		return nil, nil, errors.New("certificate: for another key than the CSR's")
	}
	if !cert.IsCA {
		return nil, nil, errors.New("certificate: not a CA certificate")
	}
	var above []*x509.Certificate
	switch list := data["ca_chain"].(type) {
	case nil:
	case []any:
		for i, e := range list {
			c, err := onePEM(e)
			if err != nil {
				return nil, nil, fmt.Errorf("ca_chain[%d]: %w", i, err)
			}
			above = append(above, c)
		}
	default:
		return nil, nil, fmt.Errorf("ca_chain: a %T, want a list of PEM strings", list)
	}
	if len(above) == 0 {
		c, err := onePEM(data["issuing_ca"])
		if err != nil {
			return nil, nil, fmt.Errorf("issuing_ca: %w", err)
		}
		above = append(above, c)
	}
	var chain []*x509.Certificate
	for _, c := range above {
		if !isSelfSigned(c) && !c.Equal(cert) {
			chain = append(chain, c)
		}
	}
	return cert, chain, nil
}

// Roots fetches the trust bundle: the PKI mount's CA certificate
// (<mount>/ca/pem) when it is a root, else the self-signed certificates of
// its chain (<mount>/ca_chain), for a Vault mount that is itself an
// intermediate.
func (u *Upstream) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	caPEM, err := u.readRaw(ctx, u.cfg.PKIMount+"/ca/pem")
	if err != nil {
		return nil, err
	}
	certs, err := ca.ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("vault: %s/ca/pem: %w", u.cfg.PKIMount, err)
	}
	if isSelfSigned(certs[0]) {
		return certs[:1], nil
	}
	chainPEM, err := u.readRaw(ctx, u.cfg.PKIMount+"/ca_chain")
	if err != nil {
		return nil, err
	}
	chain, err := ca.ParseCerts(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("vault: %s/ca_chain: %w", u.cfg.PKIMount, err)
	}
	var roots []*x509.Certificate
	for _, c := range chain {
		if isSelfSigned(c) {
			roots = append(roots, c)
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("vault: the CA of mount %s is not self-signed and %s/ca_chain holds no root; import the root into the mount's chain", u.cfg.PKIMount, u.cfg.PKIMount)
	}
	return roots, nil
}

func (u *Upstream) write(ctx context.Context, path string, body map[string]any) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	return u.client.Logical().WriteWithContext(ctx, path, body)
}

func (u *Upstream) readRaw(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	resp, err := u.client.Logical().ReadRawWithContext(ctx, path)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err == nil && resp != nil {
		err = resp.Error()
	}
	if err != nil {
		if msg, down := u.endpoint().down(err); down != nil {
			return nil, fmt.Errorf("vault: read %s: %s%w", path, msg, errSuffix(down))
		}
		return nil, fmt.Errorf("vault: read %s: %s", path, describe(err))
	}
	if resp == nil {
		return nil, fmt.Errorf("vault: read %s: no response", path)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", path, err)
	}
	return b, nil
}

// onePEM parses the first certificate of a PEM string from a response.
func onePEM(v any) (*x509.Certificate, error) {
	s, ok := v.(string)
	if v == nil || ok && s == "" {
		return nil, errors.New("missing from Vault's response")
	}
	if !ok {
		return nil, fmt.Errorf("a %T, want a PEM string", v)
	}
	certs, err := ca.ParseCerts([]byte(s))
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// sameKey reports whether two public keys are equal; every key type the
// standard library parses has an Equal method.
func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.IsCA && string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func isForbidden(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// invalidToken says whether Vault refused the request's token itself
// (expired or revoked), not what it asked for.
func invalidToken(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && slices.ContainsFunc(re.Errors, func(e string) bool { return strings.Contains(e, "invalid token") })
}

// isStatic says whether logging in again cannot bring a new token: a
// token given as such, not in a file.
func isStatic(a Auth) bool {
	t, ok := a.(Token)
	return ok && t.File == ""
}

// describe renders a Vault error as "<status> <Vault's messages>", or the
// transport error as it is.
func describe(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) {
		var msgs []string
		for _, e := range re.Errors {
			msgs = append(msgs, flattenMultiError(e)...)
		}
		msg := strings.Join(msgs, "; ")
		if msg == "" {
			msg = http.StatusText(re.StatusCode)
		}
		return fmt.Sprintf("%d %s", re.StatusCode, msg)
	}
	return err.Error()
}

// flattenMultiError turns hashicorp/go-multierror's rendering
// ("2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n")
// into its messages.
func flattenMultiError(s string) []string {
	if !strings.Contains(s, " occurred:\n") {
		return []string{strings.TrimSpace(s)}
	}
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "* ") {
			out = append(out, strings.TrimPrefix(l, "* "))
		}
	}
	return out
}
