package ca_test

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

func names(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}

// TestRotationPhases: in each phase the authority signs with the right
// key, publishes the right bundle (signing root first), and a leaf signed
// in any phase verifies against the bundle of every later phase until the
// old root retires.
func TestRotationPhases(t *testing.T) {
	t.Parallel()
	old := catest.Root(t, ca.CAOptions{CommonName: "old", TTL: 24 * time.Hour})
	next := catest.Root(t, ca.CAOptions{CommonName: "next", TTL: 48 * time.Hour})
	r := &ca.Rotation{Current: old, Next: next}
	if err := r.Check(time.Now()); err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, old)
	for _, c := range []struct {
		phase          ca.Phase
		signer         string
		bundle, server []string
	}{
		{ca.PhaseNone, "old", []string{"old"}, []string{"old"}},
		{ca.PhasePrepared, "old", []string{"old"}, []string{"old"}},
		{ca.PhasePublished, "old", []string{"old", "next"}, []string{"old"}},
		{ca.PhaseActivated, "next", []string{"next", "old"}, []string{"old"}},
	} {
		r.Phase = c.phase
		m := r.Signing()
		if err := a.Activate(m); err != nil {
			t.Fatalf("%s: %v", c.phase, err)
		}
		if got := m.Cert.Subject.CommonName; got != c.signer {
			t.Errorf("%s: signs with %s, want %s", c.phase, got, c.signer)
		}
		if got := names(a.Bundles().Roots()); !equalStrings(got, c.bundle) {
			t.Errorf("%s: bundle %v, want %v", c.phase, got, c.bundle)
		}
		if got := r.Serving().Cert.Subject.CommonName; got != c.server[0] {
			t.Errorf("%s: serving certificate from %s, want %s", c.phase, got, c.server[0])
		}
		iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: catest.ID("ns", "sa")})
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		for _, root := range a.Bundles().Roots() {
			pool.AddCert(root)
		}
		if _, err := iss.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: leaf does not verify against the bundle: %v", c.phase, err)
		}
	}
	if got := names(r.Next.Roots); !equalStrings(got, []string{"next"}) { // what signs once it retires
		t.Errorf("retired bundle %v", got)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRotationCheck: a prepared CA that reuses a trusted root, does not
// sign, or expires first is refused.
func TestRotationCheck(t *testing.T) {
	t.Parallel()
	old := catest.Root(t, ca.CAOptions{CommonName: "old", TTL: 48 * time.Hour})
	for name, next := range map[string]*ca.Material{
		"same root":     old,
		"expires first": catest.Root(t, ca.CAOptions{CommonName: "short", TTL: 24 * time.Hour}),
		"missing":       nil,
	} {
		err := (&ca.Rotation{Current: old, Next: next}).Check(time.Now())
		if !errors.Is(err, ca.ErrRotation) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := ca.ParsePhase("activatd"); err == nil {
		t.Error("a misspelt phase was accepted")
	}
	if p, err := ca.ParsePhase("publish"); err != nil || p != ca.PhasePublished || p.Index() != 2 {
		t.Errorf("ParsePhase(published) = %q %v", p, err)
	}
}

// TestOldLeavesExpire: the last old leaf expires maxTTL after activation,
// or with its signer, whichever is first.
func TestOldLeavesExpire(t *testing.T) {
	t.Parallel()
	old := catest.Root(t, ca.CAOptions{CommonName: "old", TTL: 10 * time.Hour})
	now := time.Now()
	if got := ca.OldLeavesExpire(old, now, time.Hour); !got.Equal(now.Add(time.Hour)) {
		t.Errorf("got %s", got)
	}
	if got := ca.OldLeavesExpire(old, now, 100*time.Hour); !got.Equal(old.NotAfter()) {
		t.Errorf("got %s, want the signer's expiry %s", got, old.NotAfter())
	}
}

// TestRotationCheckExpiry: a new root may expire with the current one
// (same lifetime, made in the same second: certificates carry whole
// seconds), not before it.
func TestRotationCheckExpiry(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(time.Now())
	old := catest.Root(t, ca.CAOptions{CommonName: "old", TTL: 24 * time.Hour, Clock: clock})
	same := catest.Root(t, ca.CAOptions{CommonName: "same second", TTL: 24 * time.Hour, Clock: clock})
	if err := (&ca.Rotation{Current: old, Next: same}).Check(clock.Now()); err != nil {
		t.Errorf("a root made in the same second: %v", err)
	}
	short := catest.Root(t, ca.CAOptions{CommonName: "short", TTL: time.Hour, Clock: clock})
	want := "ca: rotation: the prepared CA expires " + short.NotAfter().UTC().Format(time.RFC3339) + ", before the current one (" + old.NotAfter().UTC().Format(time.RFC3339) + ")"
	if err := (&ca.Rotation{Current: old, Next: short}).Check(clock.Now()); err == nil || err.Error() != want || !errors.Is(err, ca.ErrRotation) {
		t.Errorf("a shorter-lived root: %v, want %q", err, want)
	}
}
