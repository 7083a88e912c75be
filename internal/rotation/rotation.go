// Package rotation drives a root rotation (ca.Rotation's phases) in a
// running warden serve: the steps, persisted before they take effect in a
// Store (the data directory, or the API server), gated on the consumers
// that must hold the new root, requested over the admin socket (or, on
// Kubernetes, through the API server), and started automatically near the
// root's end.
package rotation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/bundle"
)

// Consumer reports which holders of the trust bundle lack a root.
type Consumer func(fp string) (total int, missing []string)

// Rotator drives a root rotation (ca.Phase) for the self-signed CA: it
// moves the phase towards the target one step at a time, each step
// persisted before it takes effect, waiting where a step must wait
// (activation for every consumer to hold the new root, retirement for the
// old key's last leaf to expire) unless forced, and starts a rotation by
// itself when the root nears its end (autoFraction).
type Rotator struct {
	log          *slog.Logger
	clock        ca.Clock
	authority    *ca.Authority
	serving      *servingSwitch
	store        Store
	newCA        func() (*ca.Material, error)
	maxTTL       time.Duration
	grace        time.Duration // least time between publish and activate
	autoFraction float64       // rotate automatically when less than this part of the root's life remains; 0: never

	// Wired by the servers: who holds the bundle. (Leaves are renewed
	// when the bundle's first root changes, by the servers themselves.)
	consumers map[string]Consumer
	set       *bundle.Set // the process's bundle consumers

	// Kubernetes mode: the leader polls operators' requests and reports
	// its status for them; every replica follows the stored state, and
	// reloads the current CA when a rotation ended elsewhere.
	poll        func(ctx context.Context)
	report      func(ctx context.Context, st Status)
	loadCurrent func(ctx context.Context) (*ca.Material, error)
	lastReport  string
	requestSeq  int64
	requestErr  string
	pollLog     errorLog // Run's
	reportLog   errorLog // Run's

	plugged    string // a plugged-in CA's directory: status only, rotated by its files
	afterSync  func(ctx context.Context)
	watch      func(ctx context.Context, changed func()) error // Kubernetes: follows the stored rotation (Follow runs it)
	followKick chan struct{}

	stepMu  sync.Mutex // one step at a time
	mu      sync.Mutex
	st      ca.RotationState
	cur     *ca.Material
	next    *ca.Material
	waiting string
	started atomic.Int64 // rotations started by request or automatically (metric)
	kick    chan struct{}
	lastLog time.Time
	// The last step's failure (retried every second): shown by Status,
	// logged by stepLog (under stepMu) at once and then once a minute.
	stepErr      string
	stepErrSince time.Time
	stepLog      errorLog
}

// Config wires a Rotator.
type Config struct {
	Log       *slog.Logger
	Authority *ca.Authority
	CA        ca.Config // the authority's (its clock, maximum leaf lifetime; the serving certificate's issuer during a rotation)
	Store     Store     // where the rotation is kept; nil with Plugged
	NewCA     func() (*ca.Material, error)
	// Grace is the least time between publish and activate;
	// AutoFraction starts a rotation when less than this part of the
	// root's life remains (0: never).
	Grace        time.Duration
	AutoFraction float64
	// Plugged is a plugged-in CA's directory: the rotator only reports
	// who holds which root; the operator rotates by editing the files.
	Plugged string
	// LoadCurrent reloads the current CA when a rotation ended elsewhere
	// (Kubernetes: another leader retired it).
	LoadCurrent func(ctx context.Context) (*ca.Material, error)
	// Consumers are the process's bundle consumers: activation waits
	// until each holds the new root, and each replica reports its
	// per-replica ones.
	Consumers *bundle.Set
}

// New returns a rotator; Load it before use.
func New(cfg Config) *Rotator {
	clock := cfg.CA.Clock
	if clock == nil {
		clock = ca.SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Rotator{log: cfg.Log, clock: clock, authority: cfg.Authority, serving: &servingSwitch{main: cfg.Authority, cfg: cfg.CA},
		store: cfg.Store, newCA: cfg.NewCA, maxTTL: cfg.CA.MaxTTL, grace: cfg.Grace, autoFraction: cfg.AutoFraction,
		plugged: cfg.Plugged, loadCurrent: cfg.LoadCurrent, consumers: map[string]Consumer{}, set: cfg.Consumers, kick: make(chan struct{}, 1), followKick: make(chan struct{}, 1)}
}

// AddConsumer adds a source of bundle holders a rotation waits for,
// beside Config.Consumers (Kubernetes mode's other replicas).
func (r *Rotator) AddConsumer(name string, c Consumer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.consumers[name] = c
}

// Serving issues the CA's serving certificate (from the old CA until a
// rotation retires it).
func (r *Rotator) Serving() server.ServingIssuer { return r.serving }

// Started is how many rotations were started, by request or
// automatically (a metric).
func (r *Rotator) Started() int64 { return r.started.Load() }

// Step runs what the loop runs once: an automatic start if due, then as
// many steps as can be taken now.
func (r *Rotator) Step(ctx context.Context) error {
	r.autoStart()
	return r.step(ctx)
}

// Load resumes the rotation the store holds, if any, and applies its
// phase (cur is the main store's material).
func (r *Rotator) Load(ctx context.Context, cur *ca.Material) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = cur
	st, next, found, err := r.store.Load(ctx)
	if err != nil {
		return err
	}
	if !found {
		return nil
	}
	r.st, r.next = st, next
	r.log.Warn("root rotation in progress", "phase", PhaseName(st.Phase), "target", PhaseName(st.Target), "nextRootSHA256", st.NextRootSHA256)
	return r.applyLocked()
}

func PhaseName(p ca.Phase) string {
	if p == ca.PhaseNone {
		return "none"
	}
	return string(p)
}

// applyLocked makes the authority sign, and the serving certificate come
// from, what the phase says.
func (r *Rotator) applyLocked() error {
	rot := &ca.Rotation{Phase: r.st.Phase, Current: r.cur, Next: r.next}
	if err := r.authority.Activate(rot.Signing()); err != nil {
		return err
	}
	return r.serving.set(rot)
}

// Request moves the target phase; the loop does the work.
func (r *Rotator) Request(to ca.Phase, force bool) error {
	if r.plugged != "" {
		return r.pluggedRefusal()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if to == ca.PhaseNone {
		return fmt.Errorf("%w: say which phase to go to", ca.ErrRotation)
	}
	if to.Index() <= r.st.Phase.Index() {
		return fmt.Errorf("%w: the rotation is already %s", ca.ErrRotation, PhaseName(r.st.Phase))
	}
	if r.st.Phase == ca.PhaseNone && r.st.Target == ca.PhaseNone {
		r.started.Add(1)
	}
	r.st.Target = to
	r.st.Force = force
	if r.st.Phase != ca.PhaseNone {
		if err := r.store.Save(context.Background(), r.st); err != nil {
			return err
		}
	}
	r.log.Warn("root rotation requested", "phase", PhaseName(r.st.Phase), "target", string(to), "force", force)
	r.poke()
	return nil
}

// Abort ends a rotation that has not activated: the prepared CA is
// dropped and the bundle is the current roots again.
func (r *Rotator) Abort() error {
	if r.plugged != "" {
		return r.pluggedRefusal()
	}
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.st.Phase {
	case ca.PhaseNone:
		if r.st.Target == ca.PhaseNone {
			return fmt.Errorf("%w: no rotation in progress", ca.ErrRotation)
		}
		// A request whose first step was not taken (it fails, and is
		// retried): nothing was kept, the request is dropped.
		r.st, r.waiting = ca.RotationState{}, ""
		r.stepErr, r.stepErrSince, r.stepLog = "", time.Time{}, errorLog{}
		r.log.Warn("root rotation: request cancelled before its first step")
		return nil
	case ca.PhaseActivated:
		return fmt.Errorf("%w: the new root already signs; finish the rotation (retire), or rotate again", ca.ErrRotation)
	}
	if err := r.store.Abort(context.Background()); err != nil {
		return err
	}
	r.st, r.next, r.waiting = ca.RotationState{}, nil, ""
	r.log.Warn("root rotation aborted: the bundle is the current root alone again")
	return r.applyLocked()
}

func (r *Rotator) pluggedRefusal() error {
	return fmt.Errorf("%w: the CA is plugged in from %s, whose files are yours: rotate it by editing them (add the new root to root-cert.pem; then the signing CA; then drop the old root), watching who holds each root with --status (docs/ca.md)", ca.ErrRotation, r.plugged)
}

func (r *Rotator) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run advances rotations until ctx is done.
func (r *Rotator) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if r.poll != nil {
			r.poll(ctx)
		}
		r.autoStart()
		_ = r.step(ctx) // a failure is in the status, and logged
		if r.report != nil {
			st := r.Status()
			if b, _ := json.Marshal(st); string(b) != r.lastReport {
				r.lastReport = string(b)
				r.report(ctx, st)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kick:
		}
	}
}

// autoStart begins a rotation when the root has less than autoFraction of
// its life left.
func (r *Rotator) autoStart() {
	if r.autoFraction <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Phase != ca.PhaseNone || r.st.Target != ca.PhaseNone {
		return
	}
	root := r.cur.Roots[0]
	life := root.NotAfter.Sub(root.NotBefore)
	left := root.NotAfter.Sub(r.clock.Now())
	if float64(left) >= r.autoFraction*float64(life) {
		return
	}
	r.st.Target = ca.PhaseRetired
	r.started.Add(1)
	r.log.Error(fmt.Sprintf("the root CA expires %s, with less than %.0f%% of its life left: rotating it automatically (watch 'warden ca rotate --status')",
		root.NotAfter.UTC().Format(time.RFC3339), 100*r.autoFraction), "rootSHA256", ca.RootFingerprint(r.cur))
}

// step moves the phase towards the target as far as it can now, and
// records the outcome: a failure is shown by Status until a step goes
// through, and logged at once, then once a minute while it repeats.
func (r *Rotator) step(ctx context.Context) error {
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	err := r.steps(ctx)
	now := r.clock.Now()
	r.mu.Lock()
	st, failed := r.st, r.stepErr
	switch {
	case err == nil:
		r.stepErr, r.stepErrSince = "", time.Time{}
	case err.Error() != r.stepErr:
		r.stepErr, r.stepErrSince = err.Error(), now
	}
	r.mu.Unlock()
	if err == nil && failed != "" {
		r.log.Warn("root rotation: the step that failed went through", "phase", PhaseName(st.Phase), "target", PhaseName(st.Target))
	}
	r.stepLog.note(r.log, now, err, "root rotation: a step failed; the mesh stays on the current phase, and the step is retried every second (logged again once a minute while it fails)",
		"phase", PhaseName(st.Phase), "target", PhaseName(st.Target))
	return err
}

// steps takes as many steps towards the target as can be taken now.
func (r *Rotator) steps(ctx context.Context) error {
	for {
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		if st.Phase.Index() >= st.Target.Index() {
			r.setWaiting("")
			return nil
		}
		done, err := r.advance(ctx, st)
		if err != nil || !done {
			return err
		}
	}
}

// advance takes one step from st.Phase; done is false when it must wait.
func (r *Rotator) advance(ctx context.Context, st ca.RotationState) (bool, error) {
	now := r.clock.Now()
	r.mu.Lock()
	expect := (&ca.Rotation{Phase: r.st.Phase, Current: r.cur, Next: r.next}).Signing()
	r.mu.Unlock()
	if m := r.authority.Material(); m == nil || !m.Cert.Equal(expect.Cert) {
		return false, fmt.Errorf("%w: the CA now signs with %s, which this rotation did not put there (a plugged-in CA?); rotate that one by replacing it", ca.ErrRotation, m.Cert.Subject)
	}
	switch st.Phase {
	case ca.PhaseNone:
		next, err := r.newCA()
		if err != nil {
			return false, err
		}
		r.mu.Lock()
		cur := r.cur
		r.mu.Unlock()
		if err := (&ca.Rotation{Current: cur, Next: next}).Check(now); err != nil {
			return false, err
		}
		st.Phase, st.PreparedAt, st.NextRootSHA256 = ca.PhasePrepared, now, ca.RootFingerprint(next)
		if err := r.store.Prepare(ctx, st, next); err != nil {
			return false, err
		}
		r.commit(st, next)
		r.log.Warn("root rotation: prepared a new root", "nextRootSHA256", st.NextRootSHA256, "notAfter", next.NotAfter().UTC())
	case ca.PhasePrepared:
		st.Phase, st.PublishedAt = ca.PhasePublished, now
		if err := r.store.Save(ctx, st); err != nil {
			return false, err
		}
		r.commit(st, nil)
		r.log.Warn("root rotation: published the new root beside the current one; every Consumer gets both")
	case ca.PhasePublished:
		if at := st.PublishedAt.Add(r.grace); now.Before(at) && !st.Force {
			r.setWaiting(fmt.Sprintf("activation waits until %s (--rotation-grace after publishing), so that consumers that poll files pick up the new root", at.UTC().Format(time.RFC3339)))
			return false, nil
		}
		total, missing := r.missing(st.NextRootSHA256)
		if len(missing) > 0 && !st.Force {
			r.setWaiting(fmt.Sprintf("activation waits for %d of %d consumers to hold the new root: %s", len(missing), total, strings.Join(first(missing, 10), ", ")))
			return false, nil
		}
		st.Phase, st.ActivatedAt = ca.PhaseActivated, now
		r.mu.Lock()
		st.RetireAfter = ca.OldLeavesExpire(r.cur, now, r.maxTTL)
		r.mu.Unlock()
		if err := r.store.Save(ctx, st); err != nil {
			return false, err
		}
		r.commit(st, nil)
		r.log.Warn("root rotation: the new root signs; every leaf is being renewed under it", "consumers", total, "forced", len(missing) > 0, "retireAfter", st.RetireAfter.UTC())
	case ca.PhaseActivated:
		if now.Before(st.RetireAfter) && !st.Force {
			r.setWaiting(fmt.Sprintf("retirement waits until %s, when the last leaf the old key can have signed expires (--force retires now)", st.RetireAfter.UTC().Format(time.RFC3339)))
			return false, nil
		}
		r.mu.Lock()
		next := r.next
		r.mu.Unlock()
		if err := r.store.Retire(ctx, st, next); err != nil {
			return false, err
		}
		r.mu.Lock()
		r.cur, r.next, r.st = next, nil, ca.RotationState{}
		err := r.applyLocked()
		r.mu.Unlock()
		if err != nil {
			return false, err
		}
		r.log.Warn("root rotation: retired the old root; the bundle is the new root alone", "rootSHA256", ca.RootFingerprint(next))
	}
	return true, nil
}

// commit makes st (and a newly prepared CA) current and applies it.
func (r *Rotator) commit(st ca.RotationState, next *ca.Material) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st = st
	if next != nil {
		r.next = next
	}
	r.waiting = ""
	if err := r.applyLocked(); err != nil {
		r.log.Error("root rotation: could not apply the phase", "phase", PhaseName(st.Phase), "error", err.Error())
	}
}

func (r *Rotator) setWaiting(w string) {
	r.mu.Lock()
	changed := w != r.waiting
	r.waiting = w
	loud := w != "" && (changed || r.clock.Now().Sub(r.lastLog) > 10*time.Minute)
	if loud {
		r.lastLog = r.clock.Now()
	}
	r.mu.Unlock()
	if loud {
		r.log.Warn("root rotation: " + w)
	}
}

func first(xs []string, n int) []string {
	if len(xs) > n {
		return append(xs[:n:n], fmt.Sprintf("and %d more", len(xs)-n))
	}
	return xs
}

// missing asks every consumer which holders lack the root fp.
func (r *Rotator) missing(fp string) (total int, missing []string) {
	for _, h := range r.holders(fp) {
		total += h.Total
		missing = append(missing, h.Missing...)
	}
	slices.Sort(missing)
	return total, missing
}

// sources are the consumers a rotation waits for, by name: the
// process's bundle consumers and those added with AddConsumer.
func (r *Rotator) sources() map[string]Consumer {
	r.mu.Lock()
	out := maps.Clone(r.consumers)
	r.mu.Unlock()
	if r.set != nil {
		for _, c := range r.set.All() {
			out[c.Name()] = c.Missing
		}
	}
	return out
}

// sync follows the stored rotation (Kubernetes mode: the leader writes
// it, every replica applies it).
func (r *Rotator) sync(ctx context.Context) error {
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	if p, ok := r.store.(statePeeker); ok {
		// The state alone (from the watch's cache): the prepared CA is
		// read only when the phase changed.
		st, found, err := p.State(ctx)
		if err != nil {
			return err
		}
		r.mu.Lock()
		same := found && st.Phase == r.st.Phase && st.NextRootSHA256 == r.st.NextRootSHA256
		if same {
			r.st = st
		}
		unchanged := same || (!found && r.st.Phase == ca.PhaseNone)
		r.mu.Unlock()
		if unchanged {
			return nil
		}
	}
	st, next, found, err := r.store.Load(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !found {
		if r.st.Phase == ca.PhaseNone || r.loadCurrent == nil {
			return nil
		}
		// The rotation ended (retired or aborted) elsewhere.
		m, err := r.loadCurrent(ctx)
		if err != nil {
			return err
		}
		r.cur, r.next, r.st = m, nil, ca.RotationState{}
		r.log.Info("root rotation ended", "rootSHA256", ca.RootFingerprint(m))
		return r.applyLocked()
	}
	if st.Phase == r.st.Phase && st.NextRootSHA256 == r.st.NextRootSHA256 {
		r.st = st
		return nil
	}
	r.st, r.next = st, next
	r.log.Info("root rotation: following the leader", "phase", PhaseName(st.Phase), "nextRootSHA256", st.NextRootSHA256)
	return r.applyLocked()
}

// statePeeker is a Store that reads the rotation's state without its
// prepared CA (the Kubernetes store, from its watch).
type statePeeker interface {
	State(ctx context.Context) (ca.RotationState, bool, error)
}

// PhaseIndex is the rotation phase as a number, for the metric.
func (r *Rotator) PhaseIndex() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return float64(r.st.Phase.Index())
}
