package ca_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// holdingGate is a ca.RootGate that holds back every intermediate until
// opened, unless forced, and records how it was asked.
type holdingGate struct {
	a      *ca.Authority
	mu     sync.Mutex
	open   bool
	forced []bool
}

func (g *holdingGate) Admit(m *ca.Material, _ *x509.Certificate, force bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forced = append(g.forced, force)
	if !g.open && !force {
		return fmt.Errorf("%w: the test holds it", ca.ErrHeld)
	}
	return g.a.Activate(m)
}

func (g *holdingGate) set(open bool) { g.mu.Lock(); g.open = open; g.mu.Unlock() }

func (g *holdingGate) asked() []bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]bool(nil), g.forced...)
}

// TestRenewerGateHoldsAndKicks: an intermediate the Gate holds back is
// not a failure, the current one signs on, the upstream is not asked
// again while the held one is good, and Kick offers the held one again
// (activated without a new request); a Gate that keeps holding is forced
// once the current intermediate has less than a fifth of its life left.
func TestRenewerGateHoldsAndKicks(t *testing.T) {
	t.Parallel()
	var g *holdingGate
	f := newRenewerFixture(t, func(c *ca.RenewerConfig) {
		g = &holdingGate{a: c.Authority, open: true}
		c.Gate = g
	})
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := f.a.Material()
	if got := g.asked(); len(got) != 1 || !got[0] {
		t.Fatalf("Init asked the gate %v, want once, forced (there is no current intermediate)", got)
	}
	g.set(false)
	f.run(t)
	f.advance(t, 6*time.Hour) // past half-life: a new intermediate, held back
	f.waitParked(t)
	waitCalls := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(g.asked()) < want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the gate was asked %d times, want %d; log:\n%s", len(g.asked()), want, f.log.String())
			}
		}
		f.waitParked(t)
	}
	waitCalls(2)
	if f.a.Material() != first || f.up.Calls() != 2 {
		t.Fatalf("held back: material changed %v, upstream calls %d (want 2)", f.a.Material() != first, f.up.Calls())
	}
	if renewed, failed := f.r.Counts(); renewed != 1 || failed != 0 {
		t.Fatalf("counts %d renewed, %d failed after a hold; want 1, 0", renewed, failed)
	}
	f.advance(t, time.Hour) // still held: nothing asked of anyone
	f.waitParked(t)
	if f.up.Calls() != 2 || len(g.asked()) != 2 {
		t.Fatalf("while held: %d upstream calls, %d gate calls; want 2, 2", f.up.Calls(), len(g.asked()))
	}
	g.set(true)
	f.r.Kick()
	waitCalls(3)
	if f.a.Material() == first || f.up.Calls() != 2 {
		t.Fatalf("after Kick: activated %v, %d upstream calls (want the held one, no new request)", f.a.Material() != first, f.up.Calls())
	}

	// Held until the current one is low: then forced.
	second := f.a.Material()
	g.set(false)
	f.advance(t, 5*time.Hour) // second's half-life
	waitCalls(4)
	if f.a.Material() != second {
		t.Fatal("activated although the gate holds")
	}
	f.advance(t, 3*time.Hour) // less than a fifth of second's life left
	waitCalls(5)
	if got := g.asked(); !got[4] || f.a.Material() == second {
		t.Fatalf("at low life: gate asked %v, activated %v; want forced and activated", got, f.a.Material() != second)
	}
}

// pickingGate is a holdingGate that is also a ca.RootPicker: it names
// under, and records what the renewer told it.
type pickingGate struct {
	holdingGate
	under    *x509.Certificate
	curs     []*ca.Material
	notUnder []string
}

func (g *pickingGate) Under(cur *ca.Material) *x509.Certificate {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.curs = append(g.curs, cur)
	return g.under
}

func (g *pickingGate) NotUnder(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.notUnder = append(g.notUnder, why)
}

// notUnderUpstream records each request's Under and answers as the test
// upstream does, saying it could not sign under it.
type notUnderUpstream struct {
	*catest.Upstream
	mu    sync.Mutex
	under []*x509.Certificate
}

func (u *notUnderUpstream) SignIntermediate(ctx context.Context, req ca.IntermediateRequest) (*ca.UpstreamChain, error) {
	u.mu.Lock()
	u.under = append(u.under, req.Under)
	u.mu.Unlock()
	c, err := u.Upstream.SignIntermediate(ctx, req)
	if err == nil && req.Under != nil {
		c.NotUnder = "the test's issuer is gone"
	}
	return c, err
}

// TestRenewerAsksUnderPickedRoot: a Gate that is a RootPicker names the
// root of each request, given the current intermediate (nil at Init),
// and hears why the upstream signed elsewhere before Admit; a nil root
// leaves the choice to the upstream, with nothing to hear.
func TestRenewerAsksUnderPickedRoot(t *testing.T) {
	t.Parallel()
	var g *pickingGate
	var up *notUnderUpstream
	f := newRenewerFixture(t, func(c *ca.RenewerConfig) {
		up = &notUnderUpstream{Upstream: c.Upstream.(*catest.Upstream)}
		c.Upstream = up
		g = &pickingGate{holdingGate: holdingGate{a: c.Authority, open: true}}
		c.Gate = g
	})
	g.under = f.up.Root.Roots[0]
	if err := f.r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(g.curs) != 1 || g.curs[0] != nil || len(up.under) != 1 || !up.under[0].Equal(g.under) {
		t.Fatalf("Init: the picker was given %v, the upstream asked under %v; want nil (no intermediate yet), then the picked root", g.curs, up.under)
	}
	if len(g.notUnder) != 1 || g.notUnder[0] != "the test's issuer is gone" {
		t.Fatalf("the picker heard %q, want the upstream's NotUnder", g.notUnder)
	}
	first := f.a.Material()
	g.under = nil
	if err := f.r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(g.curs) != 2 || g.curs[1] != first || len(up.under) != 2 || up.under[1] != nil || len(g.notUnder) != 1 {
		t.Fatalf("Renew: the picker was given the current material %v, the upstream asked under %v, the picker heard %q; want the current one, nil, nothing new",
			g.curs[len(g.curs)-1] == first, up.under, g.notUnder)
	}
}
