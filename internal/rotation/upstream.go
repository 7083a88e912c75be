package rotation

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
)

// Upstream drives a root rotation that happens in the upstream (Vault's
// PKI mount): the operator makes the new root there, and warden gives it
// the same publish-before-activate guarantee as a rotation of its own
// root. It reads the upstream's issuers (every Poll, and at each
// renewal), publishes a new root beside the signing one as soon as it
// sees it, while the current intermediate keeps signing, and holds back
// an intermediate under the new root (it is the Renewer's ca.RootGate)
// until every consumer holds that root and Grace has passed since it was
// published; then it has the renewer activate one. The old root stays in
// the bundle until the last intermediate under it, and so every leaf it
// signed, has expired.
//
// With several replicas (Kubernetes mode, UpstreamConfig.Leading), each
// holds an intermediate of its own but one replica decides: the leader
// reads the issuers, takes every step from every replica's consumers and
// saves the state in the Store; the others follow the saved state, and
// activate an intermediate under a root only once the leader signs under
// it (KubeUpstream).
type Upstream struct {
	cfg   UpstreamConfig
	clock ca.Clock

	mu      sync.Mutex
	st      UpstreamState
	loaded  bool              // st came from the store, or from the first intermediate
	signs   *x509.Certificate // the root the upstream signs under, as last seen
	nextIss ca.UpstreamIssuer // the upstream's issuer of st.Next
	waiting string
	lastLog time.Time
	// notUnder is why the upstream last signed under another root than
	// Under named (NotUnder), for the next Admit's log.
	notUnder string
	// The last failure to read the upstream's issuers (or to save the
	// state), shown by Status and logged once a minute.
	stepErr      string
	stepErrSince time.Time
	stepLog      errorLog
	lastPoll     time.Time
	lastReport   string
	started      atomic.Int64
	kick         func()

	// Several replicas (cfg.Leading set): shared says st is the state
	// the leader saved (not this replica's own start); dirty that st
	// has changes the store lacks (the leader saves them again every
	// step); led whether this replica led at its last step.
	shared, dirty, led bool
	saveLog, followLog errorLog
	// Set by KubeUpstream: what the other replicas lack of a root
	// (the leader's), the watch of the saved state, and what each step
	// ends with (this replica's report) and Run with (its removal).
	replicas  func(fp string, publishing bool, publishedAt time.Time) (int, []string)
	watch     func(ctx context.Context, changed func()) error
	afterStep func(ctx context.Context)
	leave     func()
	wake      chan struct{}
}

// UpstreamConfig wires an Upstream rotator.
type UpstreamConfig struct {
	Log       *slog.Logger
	Authority *ca.Authority
	Clock     ca.Clock
	Issuers   ca.IssuerLister
	// Consumers are the bundle's consumers activation waits for (the
	// process's, or on Kubernetes those this replica can count).
	Consumers func() []bundle.Consumer
	Store     UpstreamStore // nil: the state lives in memory only
	// Grace is the least time between publishing a new root and signing
	// under it (consumers that poll files); Poll how often the upstream's
	// issuers are read.
	Grace, Poll time.Duration
	// Describe names the upstream for people ("Vault at https://... (PKI
	// mount pki)"); Switch says how to make the upstream sign under an
	// issuer (Vault: make it the default); Manual is the answer to a
	// step asked by hand: how the root rotates in this mode.
	Describe string
	Switch   func(ca.UpstreamIssuer) string
	Manual   string
	// Report, when set, is given the status whenever it changes
	// (Kubernetes: the leader writes it for 'ca rotate --status'); it
	// says whether it took it (false: offer it again).
	Report func(ctx context.Context, st Status) bool
	// Leading, when set, makes this one of several replicas, each with
	// an intermediate of its own (Kubernetes mode): only while it says
	// true does this replica read the issuers, take the steps and save
	// the state (Store, then shared by every replica); otherwise it
	// follows the saved state. nil: this process decides alone.
	Leading func() bool
	// ReplicaTTL is, with several replicas, the longest intermediate the
	// upstream issues (--vault-intermediate-ttl): the leader does not see
	// the other replicas' intermediates under the old root, so it
	// retires that root no sooner than ReplicaTTL after activation.
	ReplicaTTL time.Duration
}

var (
	_ ca.RootGate   = (*Upstream)(nil)
	_ ca.RootPicker = (*Upstream)(nil)
)

// NewUpstream loads the stored state, if any.
func NewUpstream(cfg UpstreamConfig) (*Upstream, error) {
	if cfg.Clock == nil {
		cfg.Clock = ca.SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Minute
	}
	if cfg.Consumers == nil {
		cfg.Consumers = func() []bundle.Consumer { return nil }
	}
	if cfg.Switch == nil {
		cfg.Switch = func(ca.UpstreamIssuer) string { return "make the upstream sign under it" }
	}
	u := &Upstream{cfg: cfg, clock: cfg.Clock, kick: func() {}, wake: make(chan struct{}, 1)}
	if cfg.Store != nil {
		st, found, err := cfg.Store.Load()
		if err != nil {
			return nil, err
		}
		if found {
			u.st, u.loaded, u.shared = st, true, cfg.Leading != nil
			if st.Next != nil || len(st.Old) > 0 {
				cfg.Log.Warn("upstream root rotation in progress", "signingRootSHA256", ca.Fingerprint(st.Signing), "phase", PhaseName(u.phaseLocked()))
			}
		}
	}
	return u, nil
}

// SetKick gives the rotator the renewer's Kick, called once an
// intermediate under the new root may be activated.
func (u *Upstream) SetKick(kick func()) { u.kick = kick }

// Started counts the new roots published (a metric, as rotations started).
func (u *Upstream) Started() int64 { return u.started.Load() }

// PhaseIndex is the rotation's phase as a number, for the metric.
func (u *Upstream) PhaseIndex() float64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return float64(u.phaseLocked().Index())
}

func (u *Upstream) phaseLocked() ca.Phase {
	switch {
	case u.st.Next != nil:
		return ca.PhasePublished
	case len(u.st.Old) > 0:
		return ca.PhaseActivated
	}
	return ca.PhaseNone
}

// Admit implements ca.RootGate: an intermediate under the signing root
// is activated; one under the published root once the gate is open (or
// forced: the current intermediate is about to expire, and the CA would
// stop signing); one under a root not published yet publishes it and is
// held back.
func (u *Upstream) Admit(m *ca.Material, root *x509.Certificate, force bool) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.clock.Now()
	u.signs = root
	notUnder := u.notUnder
	u.notUnder = ""
	if !u.loaded {
		u.st, u.loaded = UpstreamState{Signing: root}, true
	}
	if u.shared && !u.leads() {
		return u.admitFollowerLocked(m, root, force, notUnder)
	}
	switch {
	case root.Equal(u.st.Signing):
	case u.st.Next != nil && root.Equal(u.st.Next):
		why := u.gateLocked(now)
		if why != "" && !force {
			u.setWaitingLocked(why)
			return fmt.Errorf("%w: %s", ca.ErrHeld, why)
		}
		if why != "" {
			u.cfg.Log.Error("ACTIVATING THE NEW ROOT ALTHOUGH NOT EVERY CONSUMER HOLDS IT: the current intermediate is about to expire (or there is none: warden is starting) and "+u.cfg.Describe+" signs only under the new root; consumers without it refuse the certificates signed from now on until they get the new bundle",
				"why", why, "newRootSHA256", ca.Fingerprint(root), "notUnderSigningRoot", notUnder)
		}
		u.activateLocked(now)
	case u.oldLocked(root) >= 0:
		// Back to a root being retired (the operator undid the switch):
		// every consumer still holds it.
		u.cfg.Log.Warn("the upstream signs under a root warden was retiring again; it signs again, and the root it replaces is retired in turn",
			"rootSHA256", ca.Fingerprint(root))
		u.st.Next, u.st.PublishedAt = root, now
		u.activateLocked(now)
	default:
		u.publishLocked(root, ca.UpstreamIssuer{}, now)
		if !force {
			u.cfg.Log.Warn("the upstream signs under a root warden had not published: it is published now, and the intermediate under it is held back until every consumer holds it; the current intermediate keeps signing",
				"newRootSHA256", ca.Fingerprint(root), "newRoot", root.Subject.String())
			why := u.gateLocked(now)
			u.setWaitingLocked(why)
			if err := u.applyLocked(); err != nil {
				return err
			}
			u.saveLocked()
			return fmt.Errorf("%w: %s", ca.ErrHeld, why)
		}
		u.cfg.Log.Error("ACTIVATING A NEW ROOT WITHOUT PUBLISHING IT FIRST: "+u.cfg.Describe+" signs only under a root warden had not seen, and the CA has no current intermediate that could sign meanwhile (or it is about to expire); consumers without the new root refuse the certificates signed from now on until they get the new bundle",
			"newRootSHA256", ca.Fingerprint(root), "newRoot", root.Subject.String(), "notUnderSigningRoot", notUnder)
		u.activateLocked(now)
	}
	if m.NotAfter().After(u.st.SigningNotAfter) {
		u.st.SigningNotAfter = m.NotAfter()
	}
	c := *m
	c.Roots = u.st.Roots()
	if err := u.cfg.Authority.Activate(&c); err != nil {
		return err
	}
	u.saveLocked()
	return nil
}

// Under implements ca.RootPicker: the root the state says signs, while
// this process has no intermediate (a start, or a restart, whatever the
// upstream signs with by default now) and, on a replica that follows
// the leader, always: it signs under the root the leader signs under
// (the upstream's default may be a new root the leader has not
// activated). Otherwise nil: the upstream's default issuer, whose new
// root Admit publishes and holds back until activation.
func (u *Upstream) Under(cur *ca.Material) *x509.Certificate {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.loaded || u.st.Signing == nil {
		return nil
	}
	if cur == nil || u.shared && !u.leads() {
		return u.st.Signing
	}
	return nil
}

// NotUnder implements ca.RootPicker: the upstream could not sign under
// the signing root (its issuer is gone, or refused) and signed under its
// default instead; Admit names why when it logs what it does with that
// intermediate.
func (u *Upstream) NotUnder(why string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.notUnder = why
	u.cfg.Log.Warn("upstream root rotation: "+u.cfg.Describe+" could not sign an intermediate under the root warden signs under; it signed under its default issuer instead", "why", why,
		"signingRootSHA256", ca.Fingerprint(u.st.Signing))
}

// activateLocked makes the published root the signing one; the root it
// replaces is trusted until the last intermediate under it has expired
// (workload certificates never outlive the intermediate that signed
// them): with several replicas, whose intermediates the leader does not
// see, no sooner than ReplicaTTL from now.
func (u *Upstream) activateLocked(now time.Time) {
	old := OldRoot{Root: u.st.Signing, RetireAfter: u.st.SigningNotAfter}
	if b := now.Add(u.cfg.ReplicaTTL); u.cfg.ReplicaTTL > 0 && b.After(old.RetireAfter) {
		old.RetireAfter = b
	}
	u.st.Old = slices.DeleteFunc(u.st.Old, func(o OldRoot) bool { return o.Root.Equal(u.st.Next) })
	if now.Before(old.RetireAfter) {
		u.st.Old = append(u.st.Old, old)
	}
	u.st.Signing, u.st.Next, u.st.ActivatedAt, u.st.SigningNotAfter = u.st.Next, nil, now, time.Time{}
	u.waiting = ""
	u.cfg.Log.Warn("upstream root rotation: the new root signs; every leaf is being renewed under it", "rootSHA256", ca.Fingerprint(u.st.Signing),
		"oldRootSHA256", ca.Fingerprint(old.Root), "retireAfter", old.RetireAfter.UTC())
}

// publishLocked puts root in the bundle beside the signing one (it does
// not apply it: the caller does).
func (u *Upstream) publishLocked(root *x509.Certificate, iss ca.UpstreamIssuer, now time.Time) {
	if u.st.Next != nil && u.st.Next.Equal(root) {
		return
	}
	if u.st.Next != nil {
		u.cfg.Log.Warn("upstream root rotation: the root published before is withdrawn for a newer one", "withdrawnRootSHA256", ca.Fingerprint(u.st.Next))
	}
	u.st.Next, u.st.PublishedAt, u.nextIss = root, now, iss
	u.started.Add(1)
	u.cfg.Log.Warn("upstream root rotation: published a new root beside the signing one; every consumer gets both, and the current intermediate keeps signing until every consumer holds the new root",
		"newRootSHA256", ca.Fingerprint(root), "newRoot", root.Subject.String(), "newRootNotAfter", root.NotAfter.UTC())
}

func (u *Upstream) oldLocked(root *x509.Certificate) int {
	return slices.IndexFunc(u.st.Old, func(o OldRoot) bool { return o.Root.Equal(root) })
}

// gateLocked says what activation of the published root waits for:
// --rotation-grace since publishing, and every consumer holding it; ""
// once nothing.
func (u *Upstream) gateLocked(now time.Time) string {
	if at := u.st.PublishedAt.Add(u.cfg.Grace); now.Before(at) {
		return fmt.Sprintf("activation waits until %s (--rotation-grace after publishing), so that consumers that poll files pick up the new root", at.UTC().Format(time.RFC3339))
	}
	if u.dirty && u.cfg.Leading != nil {
		return "activation waits until the published root is saved for the other replicas to follow (retried every second)"
	}
	total, missing := u.missing(ca.Fingerprint(u.st.Next), u.st)
	if len(missing) > 0 {
		return fmt.Sprintf("activation waits for %d of %d consumers to hold the new root: %s", len(missing), total, strings.Join(first(missing, 10), ", "))
	}
	return ""
}

func (u *Upstream) missing(fp string, st UpstreamState) (total int, missing []string) {
	for _, h := range u.holders(fp, st) {
		total += h.Total
		missing = append(missing, h.Missing...)
	}
	slices.Sort(missing)
	return total, missing
}

// holders says who lacks the root fp, by consumer; st is the state fp
// belongs to. The leader of several replicas counts the others too
// ("replicas", from their reports).
func (u *Upstream) holders(fp string, st UpstreamState) map[string]Holdings {
	out := map[string]Holdings{}
	for _, c := range u.cfg.Consumers() {
		t, m := c.Missing(fp)
		out[c.Name()] = Holdings{Total: t, Missing: m}
	}
	if u.replicas != nil && u.leads() {
		publishing := st.Next != nil && ca.Fingerprint(st.Next) == fp
		t, m := u.replicas(fp, publishing, st.PublishedAt)
		out["replicas"] = Holdings{Total: t, Missing: m}
	}
	return out
}

func (u *Upstream) setWaitingLocked(w string) {
	changed := w != u.waiting
	u.waiting = w
	if w != "" && (changed || u.clock.Now().Sub(u.lastLog) > 10*time.Minute) {
		u.lastLog = u.clock.Now()
		u.cfg.Log.Warn("upstream root rotation: " + w)
	}
}

// applyLocked makes the authority trust what the state says, with the
// current intermediate (and the root it chains to, which a replica
// that follows may sign under before the leader does).
func (u *Upstream) applyLocked() error {
	cur := u.cfg.Authority.Material()
	if cur == nil {
		return nil
	}
	roots := u.st.Roots()
	if a, err := cur.Anchor(); err == nil {
		roots = ca.MergeRoots(roots, []*x509.Certificate{a})
	}
	if ca.SameRoots(cur.Roots, roots) {
		return nil
	}
	c := *cur
	c.Roots = roots
	return u.cfg.Authority.Activate(&c)
}

// saveLocked keeps the state in the store: at once in a process that
// decides alone; with several replicas on the leader only, again every
// step until it goes through (a replica that does not lead saves what
// it has once it leads, unless the leader's state is there by then).
func (u *Upstream) saveLocked() {
	if u.cfg.Store == nil || !u.loaded {
		return
	}
	if u.cfg.Leading == nil {
		if err := u.cfg.Store.Save(u.st); err != nil {
			u.cfg.Log.Error("upstream root rotation: could not save the state; a restart would forget the roots being published or retired", "error", err.Error())
		}
		return
	}
	if !u.leads() {
		u.dirty = true
		return
	}
	err := u.cfg.Store.Save(u.st)
	u.saveLog.note(u.cfg.Log, u.clock.Now(), err, "upstream root rotation: could not save the state, which the other replicas follow and a new leader resumes from; retried every second (logged again once a minute while it fails)")
	if u.dirty = err != nil; !u.dirty {
		u.shared = true
	}
}

// Run reads the upstream's issuers every Poll and moves the rotation on
// every second (retirement, activation once the gate opens) until ctx is
// done. A replica that follows the leader's state does so every second,
// and at once when the watch brings a change.
func (u *Upstream) Run(ctx context.Context) error {
	if u.watch != nil {
		go func() {
			err := u.watch(ctx, func() {
				select {
				case u.wake <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				u.cfg.Log.Error("upstream root rotation: watching the saved state; reading it every second instead", "error", err.Error())
			}
		}()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		u.Step(ctx)
		select {
		case <-ctx.Done():
			if u.leave != nil {
				u.leave()
			}
			return nil
		case <-t.C:
		case <-u.wake:
		}
	}
}

// Step reads the issuers if Poll has passed, and moves the rotation on.
// With several replicas, one that does not lead follows the saved state
// instead, and one that starts to lead takes it up first.
func (u *Upstream) Step(ctx context.Context) {
	leads := u.leads()
	if u.cfg.Leading != nil {
		u.stepReplica(leads)
	}
	if leads {
		u.stepLeader(ctx)
	}
	if u.cfg.Leading != nil {
		u.switchSigning()
	}
	if u.afterStep != nil {
		u.afterStep(ctx)
	}
}

// stepLeader is the step of the replica that decides (every one, in a
// process that decides alone).
func (u *Upstream) stepLeader(ctx context.Context) {
	now := u.clock.Now()
	if u.lastPoll.IsZero() || now.Sub(u.lastPoll) >= u.cfg.Poll {
		u.lastPoll = now
		iss, err := u.cfg.Issuers.Issuers(ctx)
		if ctx.Err() != nil {
			return
		}
		u.mu.Lock()
		switch {
		case err == nil:
			u.stepErr, u.stepErrSince = "", time.Time{}
		case err.Error() != u.stepErr:
			u.stepErr, u.stepErrSince = err.Error(), now
		}
		u.mu.Unlock()
		u.stepLog.note(u.cfg.Log, now, err, "upstream root rotation: reading the upstream's issuers failed; a new root there is published once they can be read (retried every --vault-issuer-poll)")
		if err == nil {
			u.see(iss, now)
		}
	}
	if u.advance(now) {
		u.kick()
	}
	if u.cfg.Report != nil {
		st := u.Status()
		if b, _ := json.Marshal(st); string(b) != u.lastReport && u.cfg.Report(ctx, st) {
			u.lastReport = string(b)
		}
	}
}

// see publishes what the issuers call for: the root of the issuer the
// upstream signs with when it is not the signing root, else the newest
// root of another issuer made after the signing root (a root prepared
// in the upstream before it is made the default); a published root that
// left the upstream is withdrawn.
func (u *Upstream) see(iss []ca.UpstreamIssuer, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.loaded {
		return
	}
	before := u.st.Roots()
	var signer *ca.UpstreamIssuer
	var newest ca.UpstreamIssuer
	for i, is := range iss {
		if is.Signs {
			signer = &iss[i]
		}
		r := is.Root
		if r.Equal(u.st.Signing) || u.oldLocked(r) >= 0 || !now.Before(r.NotAfter) || !r.NotBefore.After(u.st.Signing.NotBefore) {
			continue
		}
		if newest.Root == nil || r.NotBefore.After(newest.Root.NotBefore) {
			newest = is
		}
	}
	if signer != nil {
		u.signs = signer.Root
	}
	switch {
	case signer != nil && !signer.Root.Equal(u.st.Signing):
		u.publishLocked(signer.Root, *signer, now)
		u.nextIss = *signer
	case newest.Root != nil:
		u.publishLocked(newest.Root, newest, now)
		u.nextIss = newest
	case u.st.Next != nil && !slices.ContainsFunc(iss, func(is ca.UpstreamIssuer) bool { return is.Root.Equal(u.st.Next) }):
		u.cfg.Log.Warn("upstream root rotation: the published root is no longer in the upstream; it is withdrawn from the bundle", "withdrawnRootSHA256", ca.Fingerprint(u.st.Next))
		u.st.Next, u.st.PublishedAt, u.waiting = nil, time.Time{}, ""
	}
	if !ca.SameRoots(before, u.st.Roots()) {
		if err := u.applyLocked(); err != nil {
			u.cfg.Log.Error("upstream root rotation: could not apply the new bundle", "error", err.Error())
		}
		u.saveLocked()
	}
}

// advance retires old roots whose last intermediate has expired; kick
// says the renewer may activate an intermediate under the published root
// (the gate is open and the upstream signs under it).
func (u *Upstream) advance(now time.Time) (kick bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.loaded {
		return false
	}
	before := u.st.Roots()
	u.st.Old = slices.DeleteFunc(u.st.Old, func(o OldRoot) bool {
		if now.Before(o.RetireAfter) {
			return false
		}
		u.cfg.Log.Warn("upstream root rotation: retired the old root; the last intermediate under it, and every leaf it signed, has expired",
			"oldRootSHA256", ca.Fingerprint(o.Root), "rootSHA256", ca.Fingerprint(u.st.Signing))
		return true
	})
	if u.st.Next != nil && !now.Before(u.st.Next.NotAfter) {
		u.cfg.Log.Warn("upstream root rotation: the published root expired before it signed; it is withdrawn", "withdrawnRootSHA256", ca.Fingerprint(u.st.Next))
		u.st.Next = nil
	}
	switch {
	case u.st.Next != nil:
		why := u.gateLocked(now)
		switch {
		case why != "":
		case u.signs == nil || !u.signs.Equal(u.st.Next):
			why = "activation waits for " + u.cfg.Describe + " to sign under the new root: " + u.cfg.Switch(u.nextIss)
		default:
			why = "every consumer holds the new root: activating an intermediate under it"
			kick = true
		}
		u.setWaitingLocked(why)
	case len(u.st.Old) > 0:
		u.waiting = fmt.Sprintf("retirement waits until %s, when the last intermediate under the old root (and every leaf it signed) expires", u.st.Old[0].RetireAfter.UTC().Format(time.RFC3339))
	default:
		u.waiting = ""
	}
	if !ca.SameRoots(before, u.st.Roots()) {
		if err := u.applyLocked(); err != nil {
			u.cfg.Log.Error("upstream root rotation: could not apply the new bundle", "error", err.Error())
		}
		u.saveLocked()
	}
	return kick
}
