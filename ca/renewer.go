package ca

import (
	"context"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults for RenewerConfig.
const (
	DefaultIntermediateTTL = 7 * 24 * time.Hour
	DefaultRenewFraction   = 0.5
	DefaultRetryMin        = time.Second
	DefaultRetryMax        = 2 * time.Minute
	// DefaultRetryExpired caps the backoff once the intermediate has
	// expired: then no workload can get a certificate, and every second
	// counts.
	DefaultRetryExpired = 5 * time.Second
	// DefaultMinLife is the floor below which an intermediate is refused:
	// shorter ones would have warden ask the upstream again and again,
	// and cut every workload certificate to minutes.
	DefaultMinLife = 10 * time.Minute
	// LowLifeFraction is the remaining share of an intermediate's life
	// below which failed renewals are logged as errors: workloads lose
	// their certificates when it expires.
	LowLifeFraction = 0.2
)

// RenewerConfig holds a Renewer's settings and dependencies. Zero values
// take the defaults.
type RenewerConfig struct {
	Authority *Authority // required: receives every proven intermediate
	Upstream  Upstream   // required
	KeyType   KeyType    // the intermediate's key; default ECDSAP256
	// Subject of the intermediate's CSR; default O=<trust domain>,
	// CN=warden intermediate CA. The upstream may override it.
	Subject pkix.Name
	TTL     time.Duration // requested intermediate lifetime
	// RenewFraction is the share of the intermediate's life after which a
	// new one is requested; in (0, 0.8] so renewal starts before the
	// low-life alarm.
	RenewFraction float64
	// RetryMin and RetryMax bound the exponential backoff between failed
	// renewals; once the intermediate has expired, the backoff is at
	// most RetryExpired (default DefaultRetryExpired).
	RetryMin, RetryMax, RetryExpired time.Duration
	// MinLife is the floor: an intermediate that arrives with less life
	// left is refused (ErrShortIntermediate), the current one kept, and
	// Init fails; default DefaultMinLife. TTL may not be below it.
	MinLife time.Duration
	// MinInterval is the least time between two intermediates the
	// upstream issues, used or refused, whatever the schedule says (an
	// upstream that backdates a short certificate puts its half-life in
	// the past); default a tenth of MinLife, and below MinLife.
	MinInterval time.Duration
	// Gate, when set, activates each proven intermediate instead of the
	// renewer, and may hold back one under a root the trust bundle's
	// consumers lack (ErrHeld): the renewer then signs on with the
	// current one and offers the held one again when Kick is called, at
	// the held one's own renewal time, or, forced, once the current one
	// has less than LowLifeFraction of its life left.
	Gate  RootGate
	Clock Timer
	Log   *slog.Logger
}

// ErrShortIntermediate marks an intermediate refused because it arrived
// with less life left than RenewerConfig.MinLife.
var ErrShortIntermediate = errors.New("intermediate refused")

// Renewer keeps an Authority signing with an intermediate issued by an
// Upstream: it obtains the first one, renews it at a fraction of its life,
// and rides out upstream outages by signing with the current one while
// retrying with capped backoff. A new intermediate is proven (a throwaway
// leaf is signed with it and verified against its bundle) before it is
// activated; one that fails is discarded and the old one kept.
type Renewer struct {
	cfg               RenewerConfig
	renewals, failure atomic.Uint64

	mu sync.Mutex
	// issued is when the upstream last issued an intermediate, used or
	// not (MinInterval counts from it); zero before the first.
	issued time.Time
	// lastErr is the last renewal's error, nil once one succeeds.
	lastErr error
	// held is an intermediate the Gate held back, offered again later.
	held *Material
	kick chan struct{}
}

// Kick has Run offer the held intermediate to the Gate again now, or
// ask the upstream for a new one (not within MinInterval of the last):
// the Gate calls it once its consumers hold the new root.
func (r *Renewer) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// LastError is why the last renewal failed, or nil when it succeeded:
// what an operator needs next to "the CA cannot sign" (readiness).
func (r *Renewer) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Counts are the renewals that activated a new intermediate and those
// that failed, since the renewer was made (metrics).
func (r *Renewer) Counts() (renewed, failed uint64) { return r.renewals.Load(), r.failure.Load() }

// NewRenewer checks cfg and fills in the defaults.
func NewRenewer(cfg RenewerConfig) (*Renewer, error) {
	if cfg.Authority == nil || cfg.Upstream == nil {
		return nil, errors.New("ca: renewer needs an Authority and an Upstream")
	}
	if cfg.KeyType == "" {
		cfg.KeyType = ECDSAP256
	}
	if cfg.Subject.CommonName == "" && len(cfg.Subject.Organization) == 0 {
		cfg.Subject = pkix.Name{Organization: []string{cfg.Authority.TrustDomain().Name()}, CommonName: "warden intermediate CA"}
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultIntermediateTTL
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("ca: intermediate TTL %s is negative", cfg.TTL)
	}
	if cfg.RenewFraction == 0 {
		cfg.RenewFraction = DefaultRenewFraction
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction > 1-LowLifeFraction {
		return nil, fmt.Errorf("ca: renew fraction %g is outside (0, %g]", cfg.RenewFraction, 1-LowLifeFraction)
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.RetryMin < 0 || cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("ca: retry backoff %s..%s is not a range", cfg.RetryMin, cfg.RetryMax)
	}
	if cfg.RetryExpired == 0 {
		cfg.RetryExpired = DefaultRetryExpired
	}
	if cfg.RetryExpired < 0 {
		return nil, fmt.Errorf("ca: retry backoff after expiry %s is negative", cfg.RetryExpired)
	}
	if cfg.MinLife == 0 {
		cfg.MinLife = DefaultMinLife
	}
	if cfg.MinLife < 0 {
		return nil, fmt.Errorf("ca: intermediate floor %s is negative", cfg.MinLife)
	}
	if cfg.TTL < cfg.MinLife {
		return nil, fmt.Errorf("ca: intermediate TTL %s is below the floor of %s", cfg.TTL, cfg.MinLife)
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = cfg.MinLife / 10
	}
	if cfg.MinInterval < 0 || cfg.MinInterval >= cfg.MinLife {
		return nil, fmt.Errorf("ca: minimum renewal interval %s is outside [0, %s), the floor", cfg.MinInterval, cfg.MinLife)
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Renewer{cfg: cfg, kick: make(chan struct{}, 1)}, nil
}

// Init obtains, proves and activates the first intermediate. It does not
// retry: at startup an unreachable or refusing upstream is an error for
// the operator, and the authority stays without material.
func (r *Renewer) Init(ctx context.Context) error { return r.Renew(ctx) }

// Renew obtains, proves and activates a new intermediate now (with a
// Gate, the one it held back if that is still good). On error the current
// one stays active; ErrHeld is not counted as a failure. A new root
// reaches consumers through the authority's Bundles.
func (r *Renewer) Renew(ctx context.Context) error {
	err := r.renew(ctx)
	switch {
	case errors.Is(err, ErrHeld):
	case err != nil:
		r.failure.Add(1)
	default:
		r.renewals.Add(1)
	}
	r.mu.Lock()
	r.lastErr = err
	r.mu.Unlock()
	return err
}

func (r *Renewer) renew(ctx context.Context) error {
	cur := r.cfg.Authority.Material()
	force := cur == nil || !r.cfg.Clock.Now().Before(r.forceAt(cur))
	r.mu.Lock()
	held := r.held
	r.held = nil
	r.mu.Unlock()
	if held != nil {
		// No new request while the held one has life enough: it is
		// offered again as it is.
		if now := r.cfg.Clock.Now(); held.NotAfter().Sub(now) >= r.cfg.MinLife && now.Before(r.RenewAt(held)) {
			return r.admit(held, nil, force)
		}
	}
	req := IntermediateRequest{TTL: r.cfg.TTL}
	picker, _ := r.cfg.Gate.(RootPicker)
	if picker != nil {
		req.Under = picker.Under(cur)
	}
	m, resp, err := requestIntermediate(ctx, r.cfg.Upstream, req, r.cfg.KeyType, r.cfg.Subject, cur, r.cfg.Clock.Now())
	now := r.cfg.Clock.Now()
	if err == nil && req.Under != nil && resp.NotUnder != "" {
		picker.NotUnder(resp.NotUnder)
	}
	if resp != nil {
		r.mu.Lock()
		r.issued = now
		r.mu.Unlock()
	}
	if err != nil {
		return err
	}
	left := m.NotAfter().Sub(now)
	if left < r.cfg.MinLife {
		return fmt.Errorf("ca: %w: the upstream issued one valid for %s, less than the floor of %s%s",
			ErrShortIntermediate, left.Round(time.Second), r.cfg.MinLife, because(resp.Shortened))
	}
	if err := r.cfg.Authority.Prove(m); err != nil {
		return err
	}
	return r.admit(m, resp, force)
}

// admit activates m, through the Gate when there is one; an intermediate
// the Gate holds back is kept for later.
func (r *Renewer) admit(m *Material, resp *UpstreamChain, force bool) error {
	if r.cfg.Gate == nil {
		if err := r.cfg.Authority.Activate(m); err != nil {
			return err
		}
	} else {
		root, err := m.Anchor()
		if err != nil {
			return err
		}
		if err := r.cfg.Gate.Admit(m, root, force); err != nil {
			if errors.Is(err, ErrHeld) {
				r.mu.Lock()
				r.held = m
				r.mu.Unlock()
			}
			return err
		}
	}
	r.cfg.Log.Info("intermediate CA activated", "subject", m.Cert.Subject.String(), "serial", m.Cert.SerialNumber.Text(16),
		"notAfter", m.NotAfter().UTC(), "renewAt", r.RenewAt(m).UTC())
	if resp != nil {
		r.reportShortened(m, m.NotAfter().Sub(r.cfg.Clock.Now()), resp.Shortened)
	}
	return nil
}

// forceAt is when the Gate may no longer hold back a successor of cur:
// LowLifeFraction of its life before its end, when workloads' certificates
// (which never outlive it) are about to expire with it.
func (r *Renewer) forceAt(cur *Material) time.Time {
	life := cur.NotAfter().Sub(cur.Cert.NotBefore)
	return cur.NotAfter().Add(-time.Duration(float64(life) * LowLifeFraction))
}

func because(why string) string {
	if why == "" {
		return ""
	}
	return ": " + why
}

// reportShortened warns when the upstream issued less than TTL (Vault's
// mount maximum below the TTL asked for), and says what that does to
// workload certificates, which never outlive the intermediate.
func (r *Renewer) reportShortened(m *Material, left time.Duration, why string) {
	// Allowance for the clocks of warden and the upstream.
	if left >= r.cfg.TTL-min(r.cfg.TTL/10, time.Minute) {
		return
	}
	msg := fmt.Sprintf("the upstream issued the intermediate for %s, not the %s asked for", left.Round(time.Second), r.cfg.TTL)
	// Before its renewal, an intermediate has this much life left at
	// least; a workload certificate asked for later is cut to it.
	if atRenewal := min(left, m.NotAfter().Sub(r.RenewAt(m))); atRenewal < r.cfg.Authority.cfg.DefaultTTL {
		msg += fmt.Sprintf("; workload certificates are cut to its remaining life, down to %s, where the default workload TTL is %s",
			atRenewal.Round(time.Second), r.cfg.Authority.cfg.DefaultTTL)
	}
	r.cfg.Log.Warn(msg+because(why), "notAfter", m.NotAfter().UTC())
}

// RenewAt is when the renewer asks for m's successor.
func (r *Renewer) RenewAt(m *Material) time.Time {
	life := m.NotAfter().Sub(m.Cert.NotBefore)
	return m.Cert.NotBefore.Add(time.Duration(float64(life) * r.cfg.RenewFraction))
}

// Run renews the intermediate on schedule until ctx is done. Failures
// are retried with backoff from RetryMin doubling to RetryMax; the current
// intermediate keeps signing meanwhile. Init must have succeeded.
func (r *Renewer) Run(ctx context.Context) error {
	failures := 0
	kicked := false
	for {
		cur := r.cfg.Authority.Material()
		if cur == nil {
			return errors.New("ca: renewer: Init has not activated an intermediate")
		}
		if wait := r.nextAttempt(cur, failures, kicked); wait > 0 {
			kicked = false
			select {
			case <-ctx.Done():
				return nil
			case <-r.cfg.Clock.After(wait):
			case <-r.kick:
				// Attempt now, within the bounds nextAttempt keeps.
				kicked = true
				continue
			}
		}
		kicked = false
		err := r.Renew(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// A Gate must not hold back once forced; if one does, back off
		// rather than offer it the same intermediate in a loop.
		if err == nil || errors.Is(err, ErrHeld) && r.cfg.Clock.Now().Before(r.forceAt(cur)) {
			failures = 0
			continue
		}
		failures++
		r.reportFailure(cur, err, failures)
	}
}

// nextAttempt is the wait before the next renewal attempt: at RenewAt
// (at once when kicked), or after failures the backoff (retryIn); and
// whatever the schedule, not within MinInterval of the last intermediate
// the upstream issued. While the Gate holds an intermediate back, it is
// offered again when kicked, at its own RenewAt, or when the current one
// runs low (forceAt), whichever comes first, without asking the upstream.
func (r *Renewer) nextAttempt(cur *Material, failures int, kicked bool) time.Duration {
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	held, issued := r.held, r.issued
	r.mu.Unlock()
	if held != nil && failures == 0 && now.Before(r.RenewAt(held)) && held.NotAfter().Sub(now) >= r.cfg.MinLife {
		if kicked {
			return 0
		}
		return min(r.RenewAt(held).Sub(now), r.forceAt(cur).Sub(now))
	}
	wait := r.RenewAt(cur).Sub(now)
	switch {
	case failures > 0:
		wait = r.retryIn(cur, failures)
	case kicked:
		wait = 0
	}
	if !issued.IsZero() {
		wait = max(wait, issued.Add(r.cfg.MinInterval).Sub(now))
	}
	return wait
}

// retryIn is the wait before the next attempt after failures: the
// backoff, but never more than a quarter of the current intermediate's
// remaining life, so that an upstream back before expiry is used before
// expiry, and once it has expired never more than RetryExpired.
func (r *Renewer) retryIn(cur *Material, failures int) time.Duration {
	d := r.backoff(failures)
	if left := cur.NotAfter().Sub(r.cfg.Clock.Now()); left > 0 {
		d = min(d, max(left/4, minRetry))
	} else {
		d = min(d, r.cfg.RetryExpired)
	}
	return d
}

// minRetry is the shortest wait between two renewal attempts.
const minRetry = 100 * time.Millisecond

func (r *Renewer) backoff(failures int) time.Duration {
	d := r.cfg.RetryMin
	for i := 1; i < failures && d < r.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, r.cfg.RetryMax)
}

// reportFailure logs a failed renewal, as an error once less than
// LowLifeFraction of the current intermediate's life remains.
func (r *Renewer) reportFailure(cur *Material, err error, failures int) {
	now := r.cfg.Clock.Now()
	life := cur.NotAfter().Sub(cur.Cert.NotBefore)
	left := cur.NotAfter().Sub(now)
	retry := max(r.nextAttempt(cur, failures, false), 0)
	attrs := []any{"error", err.Error(), "attempts", failures, "retryIn", retry,
		"intermediateNotAfter", cur.NotAfter().UTC(), "remaining", left.Round(time.Second)}
	switch {
	case errors.Is(err, ErrShortIntermediate):
		r.cfg.Log.Error("INTERMEDIATE CA REFUSED: the upstream issued one shorter than the floor; signing continues with the current one. Fix the upstream's maximum lifetime", attrs...)
	case left > 0 && r.backoff(failures) >= left:
		r.cfg.Log.Error("INTERMEDIATE CA EXPIRES BEFORE THE NEXT REGULAR RETRY: retrying every quarter of its remaining life instead; fix the upstream now", attrs...)
	case left <= 0:
		r.cfg.Log.Error("INTERMEDIATE CA EXPIRED: the upstream still fails; no workload certificates can be issued", attrs...)
	case float64(left) <= float64(life)*LowLifeFraction:
		r.cfg.Log.Error("INTERMEDIATE CA EXPIRES SOON: less than 20% of its life left and the upstream still fails; workloads lose their certificates at expiry", attrs...)
	default:
		r.cfg.Log.Warn("intermediate CA renewal failed; signing continues with the current one", attrs...)
	}
}

// proofID is the identity of the throwaway leaf that proves a new
// intermediate.
func proofID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "ns", "warden-system", "sa", "intermediate-proof")
}

// Prove signs a throwaway leaf with m, under this authority's settings,
// and verifies it against m's trust bundle the way workloads will
// (go-spiffe x509svid.Verify). Material that passes Validate can still
// fail here, for instance when the root's name constraints exclude the
// trust domain.
func (a *Authority) Prove(m *Material) error {
	cfg := a.cfg
	cfg.Meter = noMeter{}
	t, err := New(cfg, m)
	if err != nil {
		return fmt.Errorf("ca: prove intermediate: %w", err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		return err
	}
	id := proofID(cfg.TrustDomain)
	csr, err := NewCSR(key, id)
	if err != nil {
		return err
	}
	iss, err := t.Sign(SignRequest{CSR: csr, ID: id, TTL: time.Minute})
	if err != nil {
		return fmt.Errorf("ca: prove intermediate %s: sign a test leaf: %w", m.Cert.Subject, err)
	}
	certs, err := ParseChain(iss.Chain[:len(iss.Chain)-1])
	if err != nil {
		return fmt.Errorf("ca: prove intermediate %s: %w", m.Cert.Subject, err)
	}
	got, _, err := x509svid.Verify(certs, t.Bundle(), x509svid.WithTime(cfg.Clock.Now()))
	if err != nil {
		return fmt.Errorf("ca: prove intermediate %s: a test leaf does not verify against the trust bundle: %w", m.Cert.Subject, err)
	}
	if got != id {
		return fmt.Errorf("ca: prove intermediate %s: test leaf verified as %s, want %s", m.Cert.Subject, got, id)
	}
	return nil
}
