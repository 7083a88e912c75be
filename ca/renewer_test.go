package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// lockedBuffer is the shared concurrent-safe buffer.
type lockedBuffer = testkit.Buffer

type renewerFixture struct {
	clock *catest.Clock
	up    *catest.Upstream
	a     *ca.Authority
	r     *ca.Renewer
	log   *lockedBuffer
}

func newRenewerFixture(t *testing.T, mods ...func(*ca.RenewerConfig)) *renewerFixture {
	t.Helper()
	clock := catest.NewClock(start)
	f := &renewerFixture{clock: clock, log: &lockedBuffer{}}
	f.up = &catest.Upstream{Root: catest.Root(t, ca.CAOptions{Clock: clock, CommonName: "upstream root"}), Clock: clock}
	clock.Add(time.Hour)
	f.a = catest.Authority(t, nil, catest.WithClock(clock))
	cfg := ca.RenewerConfig{
		Authority: f.a, Upstream: f.up, Clock: clock, TTL: 10 * time.Hour,
		Log: slog.New(slog.NewTextHandler(f.log, nil)),
	}
	for _, m := range mods {
		m(&cfg)
	}
	r, err := ca.NewRenewer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	return f
}

// run starts the renewer's schedule; the returned function stops it.
func (f *renewerFixture) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// advance waits until the renewer is parked on the clock, then moves it.
func (f *renewerFixture) advance(t *testing.T, d time.Duration) {
	t.Helper()
	f.waitParked(t)
	f.clock.Add(d)
}

func (f *renewerFixture) waitParked(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.clock.Waiters() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("renewer never waited on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *renewerFixture) leaf(t *testing.T) []*x509.Certificate {
	t.Helper()
	iss, err := f.a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: callerX})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseChain(iss.Chain[:len(iss.Chain)-1])
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func (f *renewerFixture) verify(t *testing.T, what string, chain []*x509.Certificate) {
	t.Helper()
	id, _, err := x509svid.Verify(chain, f.a.Bundle(), x509svid.WithTime(f.clock.Now()))
	if err != nil || id != callerX {
		t.Errorf("%s: x509svid.Verify = %v, %v", what, id, err)
	}
}

func TestRenewerSwitchKeepsOldAndNewLeavesVerifying(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t)
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	if first.Cert.NotAfter.Sub(first.Cert.NotBefore) != 10*time.Hour+time.Minute {
		t.Fatalf("intermediate life %s, want the requested 10h (+1m backdate)", first.Cert.NotAfter.Sub(first.Cert.NotBefore))
	}
	if want := first.Cert.NotBefore.Add(first.Cert.NotAfter.Sub(first.Cert.NotBefore) / 2); !f.r.RenewAt(first).Equal(want) {
		t.Fatalf("RenewAt = %s, want half-life %s", f.r.RenewAt(first), want)
	}
	old := f.leaf(t)
	if len(old) != 2 || !old[1].Equal(first.Cert) {
		t.Fatalf("leaf chain = %d certs, want leaf and the intermediate", len(old))
	}
	if !old[0].NotAfter.Equal(first.NotAfter()) {
		t.Errorf("leaf NotAfter %s, want clamped to the intermediate's %s", old[0].NotAfter, first.NotAfter())
	}
	f.run(t)
	f.advance(t, 4*time.Hour) // before half-life: nothing happens
	f.waitParked(t)
	if f.a.Material() != first || f.up.Calls() != 1 {
		t.Fatalf("renewed before half-life (%d upstream calls)", f.up.Calls())
	}
	f.clock.Add(2 * time.Hour) // past half-life
	deadline := time.Now().Add(10 * time.Second)
	for f.a.Material() == first {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal after half-life; log:\n%s", f.log.String())
		}
		time.Sleep(time.Millisecond)
	}
	second := f.a.Material()
	if second.Cert.Equal(first.Cert) || !second.Roots[0].Equal(first.Roots[0]) {
		t.Fatal("renewal did not install a new intermediate under the same root")
	}
	fresh := f.leaf(t)
	if !fresh[1].Equal(second.Cert) {
		t.Fatal("new leaves are not signed by the new intermediate")
	}
	f.verify(t, "leaf from before the switch", old)
	f.verify(t, "leaf from after the switch", fresh)
	if !strings.Contains(f.log.String(), "intermediate CA activated") {
		t.Errorf("log lacks the activation:\n%s", f.log.String())
	}
}

func TestRenewerOutageKeepsSigningAndAlarmsAtLowLife(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t, func(c *ca.RenewerConfig) { c.RetryMin, c.RetryMax = time.Minute, 30*time.Minute })
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	f.up.SetErr(errors.New("vault: connection refused"))
	f.run(t)
	f.advance(t, 5*time.Hour+time.Minute) // half-life: first attempt fails
	// Backoff: 1m, 2m, 4m, ... capped at 30m. Walk to 1h before expiry.
	for f.clock.Now().Before(first.NotAfter().Add(-time.Hour)) {
		f.advance(t, 30*time.Minute)
		if f.a.Material() != first {
			t.Fatal("material changed during the outage")
		}
		f.verify(t, "leaf during the outage", f.leaf(t))
	}
	f.waitParked(t)
	logs := f.log.String()
	if !strings.Contains(logs, "level=WARN msg=\"intermediate CA renewal failed; signing continues with the current one\" error=\"vault: connection refused\"") {
		t.Errorf("no warning for the early failures:\n%s", logs)
	}
	if !strings.Contains(logs, "level=ERROR msg=\"INTERMEDIATE CA EXPIRES SOON") {
		t.Errorf("no error at 20%% remaining:\n%s", logs)
	}
	if n := f.up.Calls(); n < 8 || n > 20 {
		t.Errorf("%d upstream calls over 4h of outage with 1m..30m backoff", n)
	}
	f.up.SetErr(nil) // Vault is back
	f.advance(t, 30*time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for f.a.Material() == first {
		if time.Now().After(deadline) {
			t.Fatal("no renewal after the upstream came back")
		}
		time.Sleep(time.Millisecond)
	}
	f.verify(t, "leaf after recovery", f.leaf(t))
}

func TestRenewerRejectsUnprovenIntermediate(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t)
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	// The upstream now issues intermediates whose name constraints exclude
	// the trust domain: they validate as CAs, but no SVID verifies.
	f.up.Mutate = func(c *x509.Certificate) { c.ExcludedURIDomains = []string{"cluster.local"} }
	err := f.r.Renew(context.Background())
	const want = "does not verify against the trust bundle"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Renew = %v, want an error containing %q", err, want)
	}
	if f.a.Material() != first {
		t.Fatal("an unproven intermediate was activated")
	}
	// And at startup: no CA at all.
	g := newRenewerFixture(t)
	g.up.Mutate = f.up.Mutate
	if err := g.r.Init(context.Background()); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Init = %v", err)
	}
	if g.a.Material() != nil {
		t.Fatal("authority has material after a failed Init")
	}
}

func TestRequestIntermediateErrors(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	other := catest.Root(t, ca.CAOptions{Clock: clock, CommonName: "other root"})
	for _, tc := range []struct {
		name string
		up   ca.Upstream
		want string
	}{
		{"upstream error", upstreamFunc(func() (*ca.UpstreamChain, error) { return nil, errors.New("vault: 403 permission denied") }), "vault: 403 permission denied"},
		{"empty answer", upstreamFunc(func() (*ca.UpstreamChain, error) { return &ca.UpstreamChain{}, nil }), "ca: upstream returned no certificate or no root"},
		{"wrong key", upstreamFunc(func() (*ca.UpstreamChain, error) {
			return &ca.UpstreamChain{Cert: root.Cert, Roots: root.Roots}, nil
		}), "ca: upstream returned a certificate for another key than the CSR's"},
		{"wrong root", &wrongRoot{catest.Upstream{Root: root, Clock: clock}, other}, "ca: upstream intermediate: ca: ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.RequestIntermediate(context.Background(), tc.up, ca.ECDSAP256, catest.TrustDomainSubject(), time.Hour, nil, clock.Now())
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNewRenewerRejectsBadSettings(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, nil)
	up := &catest.Upstream{}
	for _, tc := range []struct {
		cfg  ca.RenewerConfig
		want string
	}{
		{ca.RenewerConfig{Upstream: up}, "ca: renewer needs an Authority and an Upstream"},
		{ca.RenewerConfig{Authority: a, Upstream: up, RenewFraction: 0.9}, "ca: renew fraction 0.9 is outside (0, 0.8]"},
		{ca.RenewerConfig{Authority: a, Upstream: up, TTL: -time.Hour}, "ca: intermediate TTL -1h0m0s is negative"},
		{ca.RenewerConfig{Authority: a, Upstream: up, RetryMin: time.Hour, RetryMax: time.Minute}, "ca: retry backoff 1h0m0s..1m0s is not a range"},
	} {
		if _, err := ca.NewRenewer(tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("NewRenewer = %v, want %q", err, tc.want)
		}
	}
}

type upstreamFunc func() (*ca.UpstreamChain, error)

func (f upstreamFunc) SignIntermediate(context.Context, ca.IntermediateRequest) (*ca.UpstreamChain, error) {
	return f()
}

// wrongRoot signs correctly but names another root as the anchor.
type wrongRoot struct {
	catest.Upstream
	other *ca.Material
}

func (w *wrongRoot) SignIntermediate(ctx context.Context, req ca.IntermediateRequest) (*ca.UpstreamChain, error) {
	c, err := w.Upstream.SignIntermediate(ctx, req)
	if err != nil {
		return nil, err
	}
	c.Roots = w.other.Roots
	return c, nil
}

// BenchmarkRenew measures one intermediate issuance against an in-process
// upstream: key generation, CSR, signing, validation and the proof.
func BenchmarkRenew(b *testing.B) {
	clock := catest.NewClock(time.Now())
	up := &catest.Upstream{Root: catest.Root(b, ca.CAOptions{Clock: clock}), Clock: clock}
	a := catest.Authority(b, nil, catest.WithClock(clock))
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, Clock: clock})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := r.Renew(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRenewerBackoffCappedByRemainingLife: with a long backoff (up to 4h)
// the retries still come at least every quarter of the intermediate's
// remaining life, so an upstream that is back 40 minutes before expiry is
// used before expiry; the log says loudly when the backoff outgrew the
// remaining life.
func TestRenewerBackoffCappedByRemainingLife(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t, func(c *ca.RenewerConfig) { c.RetryMin, c.RetryMax = time.Minute, 4*time.Hour })
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	f.up.SetErr(errors.New("vault: connection refused"))
	f.run(t)
	back := first.NotAfter().Add(-40 * time.Minute)
	for f.clock.Now().Before(back) {
		f.advance(t, 5*time.Minute)
	}
	f.up.SetErr(nil)
	for f.a.Material() == first {
		if !f.clock.Now().Before(first.NotAfter()) {
			t.Fatalf("the intermediate expired before a retry reached the recovered upstream:\n%s", f.log.String())
		}
		f.advance(t, time.Minute)
		deadline := time.Now().Add(time.Second)
		for f.a.Material() == first && time.Now().Before(deadline) && f.clock.Waiters() == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	if !strings.Contains(f.log.String(), "INTERMEDIATE CA EXPIRES BEFORE THE NEXT REGULAR RETRY") {
		t.Errorf("no loud error once the backoff outgrew the remaining life:\n%s", f.log.String())
	}
}
