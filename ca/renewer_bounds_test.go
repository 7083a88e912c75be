package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// TestRenewerMinInterval (issue #28, 1): an upstream whose intermediates
// are backdated so far that their renewal time (NotBefore plus half the
// life) is past on arrival, as Vault's are when its mount cuts them short.
// The renewer asked again at once, for ever; now it asks at most once a
// minute (a tenth of the 10-minute floor), the clock moved 10 minutes.
func TestRenewerMinInterval(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t)
	f.up.Mutate = func(c *x509.Certificate) {
		c.NotBefore = f.clock.Now().Add(-10 * time.Hour)
		c.NotAfter = f.clock.Now().Add(time.Hour)
	}
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	for range 60 {
		f.advance(t, 10*time.Second)
	}
	f.waitParked(t)
	if n := f.up.Calls(); n < 10 || n > 11 {
		t.Fatalf("%d intermediates asked for in 10 minutes, want 10 or 11 (at most one a minute)", n)
	}
}

// TestRenewerRefusesShortIntermediate: an intermediate with less life
// than the floor is refused at Init (no CA) and at a renewal (the current
// one keeps signing), reported at ERROR; and one shorter than asked, but
// above the floor, is used with a warning that workload certificates are
// cut below the default TTL.
func TestRenewerRefusesShortIntermediate(t *testing.T) {
	t.Parallel()
	short := func(f *renewerFixture, d time.Duration) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.NotAfter = f.clock.Now().Add(d) }
	}
	g := newRenewerFixture(t)
	g.up.Mutate = short(g, 5*time.Minute)
	err := g.r.Init(context.Background())
	if want := "ca: intermediate refused: the upstream issued one valid for 5m0s, less than the floor of 10m0s"; !errors.Is(err, ca.ErrShortIntermediate) || err.Error() != want {
		t.Fatalf("Init:\n got %v\nwant %s", err, want)
	}
	if g.a.Material() != nil {
		t.Fatal("a short intermediate was activated")
	}

	f := newRenewerFixture(t)
	f.up.Mutate = short(f, time.Hour)
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := `level=WARN msg="the upstream issued the intermediate for 1h0m0s, not the 10h0m0s asked for; workload certificates are cut to its remaining life, down to 30m30s, where the default workload TTL is 24h0m0s"`; !strings.Contains(f.log.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, f.log.String())
	}
	first := f.a.Material()
	f.up.Mutate = short(f, time.Minute)
	f.run(t)
	f.advance(t, 31*time.Minute) // past half-life: the renewal is refused
	f.waitParked(t)
	if f.a.Material() != first {
		t.Fatal("a short intermediate replaced the current one")
	}
	if want := `level=ERROR msg="INTERMEDIATE CA REFUSED: the upstream issued one shorter than the floor; signing continues with the current one. Fix the upstream's maximum lifetime" error="ca: intermediate refused: the upstream issued one valid for 1m0s, less than the floor of 10m0s"`; !strings.Contains(f.log.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, f.log.String())
	}
}

func TestNewRenewerRejectsBadBounds(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t)
	for _, tc := range []struct {
		cfg  ca.RenewerConfig
		want string
	}{
		{ca.RenewerConfig{TTL: 5 * time.Minute}, "ca: intermediate TTL 5m0s is below the floor of 10m0s"},
		{ca.RenewerConfig{MinLife: -time.Second}, "ca: intermediate floor -1s is negative"},
		{ca.RenewerConfig{MinLife: time.Hour, MinInterval: time.Hour}, "ca: minimum renewal interval 1h0m0s is outside [0, 1h0m0s), the floor"},
	} {
		tc.cfg.Authority, tc.cfg.Upstream = f.a, f.up
		if _, err := ca.NewRenewer(tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("NewRenewer = %v, want %q", err, tc.want)
		}
	}
}

// TestRenewerRetriesFastOnceExpired (issue #28, 2): an outage that
// outlasts the intermediate. Before expiry the backoff grows (to 30
// minutes here); once the intermediate has expired no workload can get a
// certificate, and the retries come every 5 s, so that the upstream is
// used as soon as it is back. They came every 30 minutes.
func TestRenewerRetriesFastOnceExpired(t *testing.T) {
	t.Parallel()
	f := newRenewerFixture(t, func(c *ca.RenewerConfig) { c.RetryMin, c.RetryMax = time.Minute, 30*time.Minute })
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	f.up.SetErr(errors.New("vault: Vault is sealed"))
	f.run(t)
	for f.clock.Now().Before(first.NotAfter()) {
		f.advance(t, time.Minute)
	}
	f.waitParked(t)
	before := f.up.Calls()
	for range 12 {
		f.advance(t, 5*time.Second)
	}
	f.waitParked(t)
	if n := f.up.Calls() - before; n < 11 || n > 13 {
		t.Fatalf("%d attempts in the minute after expiry, want one every 5 s", n)
	}
	f.up.SetErr(nil)
	f.advance(t, 5*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for f.a.Material() == first {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal 5 s after the upstream came back:\n%s", f.log.String())
		}
		time.Sleep(time.Millisecond)
	}
	if err := f.a.Ready(); err != nil {
		t.Fatalf("Ready after the renewal: %v", err)
	}
}
