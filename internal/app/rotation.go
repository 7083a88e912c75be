package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/kube"
	sdsserver "github.com/wardenmesh/warden/sds/server"
)

// adminSocket, in the data directory, is where 'warden ca rotate' reaches
// the running 'warden serve': a Unix socket as private as the directory
// (0600), so only who could read the CA key can drive its rotation.
const adminSocket = "admin.sock"

// rotationStore keeps a rotation across restarts.
type rotationStore interface {
	// Load returns the rotation in progress, with its prepared CA.
	Load(ctx context.Context) (st ca.RotationState, next *ca.Material, found bool, err error)
	Prepare(ctx context.Context, st ca.RotationState, next *ca.Material) error
	Save(ctx context.Context, st ca.RotationState) error
	// Retire makes next the CA for good and forgets the rotation.
	Retire(ctx context.Context, st ca.RotationState, next *ca.Material) error
	Abort(ctx context.Context) error
}

// dirRotation is the standalone rotationStore: the data directory.
type dirRotation struct {
	dir   string
	clock ca.Clock
}

func (d *dirRotation) store() *filestore.Store { return &filestore.Store{Dir: d.dir} }

func (d *dirRotation) Load(ctx context.Context) (ca.RotationState, *ca.Material, bool, error) {
	st, found, err := d.store().ReadRotation()
	if err != nil || !found {
		return st, nil, false, err
	}
	f, err := d.store().NextStore().Load(ctx)
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress: %w", err)
	}
	next, err := ca.DecodeMaterial(f, d.clock.Now())
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress: %w", err)
	}
	if fp := ca.RootFingerprint(next); fp != st.NextRootSHA256 {
		return st, nil, false, fmt.Errorf("the prepared CA's root is %s, but the rotation prepared %s: restore %s", fp, st.NextRootSHA256, filepath.Join(d.dir, filestore.RotationDir))
	}
	return st, next, true, nil
}

func (d *dirRotation) Prepare(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	// A crash between the two leaves a prepared CA without a state, which
	// the next Load removes.
	_ = d.store().RemoveRotation()
	f, err := next.Encode()
	if err != nil {
		return err
	}
	if err := d.store().NextStore().Create(ctx, f); err != nil {
		return err
	}
	return d.store().WriteRotation(st)
}

func (d *dirRotation) Save(_ context.Context, st ca.RotationState) error {
	return d.store().WriteRotation(st)
}

func (d *dirRotation) Retire(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	st.Retiring = true
	if err := d.store().WriteRotation(st); err != nil {
		return err
	}
	return finishRetire(ctx, d.dir, next)
}

func (d *dirRotation) Abort(context.Context) error { return d.store().RemoveRotation() }

// finishRetire replaces the main store with the prepared CA, records its
// root in the marker, and removes the rotation. Each step can be redone.
func finishRetire(ctx context.Context, dir string, next *ca.Material) error {
	f, err := next.Encode()
	if err != nil {
		return err
	}
	s := &filestore.Store{Dir: dir}
	if err := s.Promote(ctx, f); err != nil {
		return err
	}
	mk, err := filestore.ReadMarker(dir)
	if err != nil {
		return err
	}
	mk.RootSHA256 = ca.RootFingerprint(next)
	if err := filestore.WriteMarker(dir, mk); err != nil {
		return err
	}
	return s.RemoveRotation()
}

// recoverRetire finishes a retirement a crash interrupted, before the
// main store is read.
func recoverRetire(ctx context.Context, dir string, clock ca.Clock) (bool, error) {
	d := &dirRotation{dir: dir, clock: clock}
	st, next, found, err := d.Load(ctx)
	if err != nil || !found || !st.Retiring {
		return false, err
	}
	return true, finishRetire(ctx, dir, next)
}

// consumer reports which holders of the trust bundle lack a root.
type consumer func(fp string) (total int, missing []string)

// rotator drives a root rotation (ca.Phase) for the self-signed CA: it
// moves the phase towards the target one step at a time, each step
// persisted before it takes effect, waiting where a step must wait
// (activation for every consumer to hold the new root, retirement for the
// old key's last leaf to expire) unless forced, and starts a rotation by
// itself when the root nears its end (autoFraction).
type rotator struct {
	log          *slog.Logger
	clock        ca.Clock
	authority    *ca.Authority
	serving      *servingSwitch
	store        rotationStore
	newCA        func() (*ca.Material, error)
	maxTTL       time.Duration
	grace        time.Duration // least time between publish and activate
	autoFraction float64       // rotate automatically when less than this part of the root's life remains; 0: never

	// Wired by the servers: who holds the bundle. (Leaves are renewed
	// when the bundle's first root changes, by the servers themselves.)
	consumers map[string]consumer

	// Kubernetes mode: the leader polls operators' requests and reports
	// its status for them; every replica follows the stored state, and
	// reloads the current CA when a rotation ended elsewhere.
	poll        func(ctx context.Context)
	report      func(ctx context.Context, st rotationStatus)
	loadCurrent func(ctx context.Context) (*ca.Material, error)
	lastReport  string
	requestSeq  int64
	requestErr  string

	plugged   string // a plugged-in CA's directory: status only, rotated by its files
	afterSync func(ctx context.Context)

	stepMu  sync.Mutex // one step at a time
	mu      sync.Mutex
	st      ca.RotationState
	cur     *ca.Material
	next    *ca.Material
	waiting string
	started atomic.Int64 // rotations started by request or automatically (metric)
	kick    chan struct{}
	lastLog time.Time
}

func newRotator(log *slog.Logger, clock ca.Clock, authority *ca.Authority, cfg ca.Config, store rotationStore, newCA func() (*ca.Material, error), grace time.Duration, autoFraction float64) *rotator {
	return &rotator{log: log, clock: clock, authority: authority, serving: &servingSwitch{main: authority, cfg: cfg},
		store: store, newCA: newCA, maxTTL: cfg.MaxTTL, grace: grace, autoFraction: autoFraction,
		consumers: map[string]consumer{}, kick: make(chan struct{}, 1)}
}

// load resumes the rotation the store holds, if any, and applies its
// phase (cur is the main store's material).
func (r *rotator) load(ctx context.Context, cur *ca.Material) error {
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
	r.log.Warn("root rotation in progress", "phase", phaseName(st.Phase), "target", phaseName(st.Target), "nextRootSHA256", st.NextRootSHA256)
	return r.applyLocked()
}

func phaseName(p ca.Phase) string {
	if p == ca.PhaseNone {
		return "none"
	}
	return string(p)
}

// applyLocked makes the authority sign, and the serving certificate come
// from, what the phase says.
func (r *rotator) applyLocked() error {
	rot := &ca.Rotation{Phase: r.st.Phase, Current: r.cur, Next: r.next}
	if err := r.authority.Activate(rot.Signing()); err != nil {
		return err
	}
	return r.serving.set(rot)
}

// request moves the target phase; the loop does the work.
func (r *rotator) request(to ca.Phase, force bool) error {
	if r.plugged != "" {
		return r.pluggedRefusal()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if to == ca.PhaseNone {
		return fmt.Errorf("%w: say which phase to go to", ca.ErrRotation)
	}
	if to.Index() <= r.st.Phase.Index() {
		return fmt.Errorf("%w: the rotation is already %s", ca.ErrRotation, phaseName(r.st.Phase))
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
	r.log.Warn("root rotation requested", "phase", phaseName(r.st.Phase), "target", string(to), "force", force)
	r.poke()
	return nil
}

// abort ends a rotation that has not activated: the prepared CA is
// dropped and the bundle is the current roots again.
func (r *rotator) abort() error {
	if r.plugged != "" {
		return r.pluggedRefusal()
	}
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.st.Phase {
	case ca.PhaseNone:
		return fmt.Errorf("%w: no rotation in progress", ca.ErrRotation)
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

func (r *rotator) pluggedRefusal() error {
	return fmt.Errorf("%w: the CA is plugged in from %s, whose files are yours: rotate it by editing them (add the new root to root-cert.pem; then the signing CA; then drop the old root), watching who holds each root with --status (docs/ca.md)", ca.ErrRotation, r.plugged)
}

func (r *rotator) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run advances rotations until ctx is done.
func (r *rotator) run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if r.poll != nil {
			r.poll(ctx)
		}
		r.autoStart()
		if err := r.step(ctx); err != nil {
			r.log.Error("root rotation step failed; the mesh stays on the current phase", "error", err.Error())
		}
		if r.report != nil {
			st := r.status()
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
func (r *rotator) autoStart() {
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

// step moves the phase towards the target as far as it can now.
func (r *rotator) step(ctx context.Context) error {
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
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
func (r *rotator) advance(ctx context.Context, st ca.RotationState) (bool, error) {
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
		r.log.Warn("root rotation: published the new root beside the current one; every consumer gets both")
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
func (r *rotator) commit(st ca.RotationState, next *ca.Material) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st = st
	if next != nil {
		r.next = next
	}
	r.waiting = ""
	if err := r.applyLocked(); err != nil {
		r.log.Error("root rotation: could not apply the phase", "phase", phaseName(st.Phase), "error", err.Error())
	}
}

func (r *rotator) setWaiting(w string) {
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
func (r *rotator) missing(fp string) (total int, missing []string) {
	for _, c := range r.consumers {
		t, m := c(fp)
		total += t
		missing = append(missing, m...)
	}
	return total, missing
}

// sync follows the stored rotation (Kubernetes mode: the leader writes
// it, every replica applies it).
func (r *rotator) sync(ctx context.Context) error {
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
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
	r.log.Info("root rotation: following the leader", "phase", phaseName(st.Phase), "nextRootSHA256", st.NextRootSHA256)
	return r.applyLocked()
}

// rotationStatus is what 'warden ca rotate --status' shows.
type rotationStatus struct {
	Phase          string              `json:"phase"`
	Target         string              `json:"target"`
	Force          bool                `json:"force,omitempty"`
	Waiting        string              `json:"waiting,omitempty"`
	CurrentRoot    string              `json:"currentRootSHA256"`
	CurrentExpires time.Time           `json:"currentRootNotAfter"`
	NextRoot       string              `json:"nextRootSHA256,omitempty"`
	PreparedAt     time.Time           `json:"preparedAt,omitzero"`
	PublishedAt    time.Time           `json:"publishedAt,omitzero"`
	ActivatedAt    time.Time           `json:"activatedAt,omitzero"`
	RetireAfter    time.Time           `json:"retireAfter,omitzero"`
	Consumers      map[string]holdings `json:"consumers,omitempty"`
	RequestSeq     int64               `json:"requestSeq,omitempty"` // Kubernetes: the last operator request taken
	RequestError   string              `json:"requestError,omitempty"`
	// A plugged-in CA is rotated by editing its files: the status then
	// says, for every root of the bundle, who holds it.
	Plugged string        `json:"plugged,omitempty"`
	Roots   []rootHolders `json:"roots,omitempty"`
}

type holdings struct {
	Total   int      `json:"total"`
	Missing []string `json:"missing,omitempty"`
}

func (r *rotator) status() rotationStatus {
	r.mu.Lock()
	st, cur, waiting, seq, reqErr := r.st, r.cur, r.waiting, r.requestSeq, r.requestErr
	r.mu.Unlock()
	if r.plugged != "" {
		cur = r.authority.Material()
	}
	out := rotationStatus{Phase: phaseName(st.Phase), Target: phaseName(st.Target), Force: st.Force, Waiting: waiting,
		CurrentRoot: ca.RootFingerprint(cur), CurrentExpires: cur.Roots[0].NotAfter, NextRoot: st.NextRootSHA256,
		PreparedAt: st.PreparedAt, PublishedAt: st.PublishedAt, ActivatedAt: st.ActivatedAt, RetireAfter: st.RetireAfter, RequestSeq: seq, RequestError: reqErr}
	if st.NextRootSHA256 != "" {
		out.Consumers = r.holders(st.NextRootSHA256)
	}
	if r.plugged != "" {
		out.Plugged = r.plugged
		// What an operator rotating by hand needs: who holds each root.
		for i, root := range r.authority.Bundles().Roots() {
			fp := ca.RootFingerprint(&ca.Material{Roots: []*x509.Certificate{root}})
			out.Roots = append(out.Roots, rootHolders{SHA256: fp, Subject: root.Subject.String(), Signing: i == 0, NotAfter: root.NotAfter, Consumers: r.holders(fp)})
		}
	}
	return out
}

func (r *rotator) holders(fp string) map[string]holdings {
	out := map[string]holdings{}
	for name, c := range r.consumers {
		t, m := c(fp)
		out[name] = holdings{Total: t, Missing: m}
	}
	return out
}

type rootHolders struct {
	SHA256    string              `json:"sha256"`
	Subject   string              `json:"subject"`
	Signing   bool                `json:"signing,omitempty"`
	NotAfter  time.Time           `json:"notAfter"`
	Consumers map[string]holdings `json:"consumers"`
}

// phaseIndex is the rotation phase as a number, for the metric.
func (r *rotator) phaseIndex() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return float64(r.st.Phase.Index())
}

// servingSwitch issues the CA's serving certificate from the authority,
// or during a rotation from the material every client trusts longest
// (ca.Rotation.Serving).
type servingSwitch struct {
	main *ca.Authority
	cfg  ca.Config
	alt  atomic.Pointer[ca.Authority]
}

func (s *servingSwitch) set(rot *ca.Rotation) error {
	if rot.Phase != ca.PhasePublished && rot.Phase != ca.PhaseActivated {
		s.alt.Store(nil)
		return nil
	}
	a, err := ca.New(s.cfg, rot.Serving())
	if err != nil {
		return err
	}
	s.alt.Store(a)
	return nil
}

func (s *servingSwitch) pick() *ca.Authority {
	if a := s.alt.Load(); a != nil {
		return a
	}
	return s.main
}

func (s *servingSwitch) Material() *ca.Material { return s.pick().Material() }

func (s *servingSwitch) IssueServing(o ca.ServingOptions) (*tls.Certificate, error) {
	return s.pick().IssueServing(o)
}

// adminHandler is the rotation API on the admin socket.
func (r *rotator) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rotation", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.status())
	})
	mux.HandleFunc("POST /rotation", func(w http.ResponseWriter, req *http.Request) {
		to, err := ca.ParsePhase(req.URL.Query().Get("to"))
		if err == nil {
			err = r.request(to, req.URL.Query().Get("force") == "true")
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		_ = r.step(req.Context())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.status())
	})
	mux.HandleFunc("POST /rotation/abort", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.abort(); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.status())
	})
	return mux
}

// serveAdmin serves the admin socket in dataDir until ctx is done.
func (r *rotator) serveAdmin(ctx context.Context, dataDir string) error {
	path := filepath.Join(dataDir, adminSocket)
	l, err := sdsserver.ListenUnix(path, 0o600)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	srv := &http.Server{Handler: r.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
		_ = os.Remove(path)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// adminClient talks to a running serve's admin socket.
func adminClient(dataDir string) *http.Client {
	path := filepath.Join(dataDir, adminSocket)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func runCARotate(ctx context.Context, e *env, args []string) error {
	fs := e.flags("ca rotate")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "the data directory of the running 'warden serve' (its admin socket is there)")
	force := fs.Bool("force", false, "do not wait: activate although consumers lack the new root, retire before the old key's last leaf expires")
	statusOnly := fs.Bool("status", false, "show the rotation's phase, who holds which bundle, and what the next step waits for")
	kubeMode := fs.Bool("kubernetes", false, "rotate the root of a warden install on Kubernetes (the request goes to its leader through the API server)")
	kubeconfig := fs.String("kubeconfig", e.getenv("KUBECONFIG"), "with --kubernetes: kubeconfig file; empty means in-cluster")
	namespace := fs.String("namespace", "warden-system", "with --kubernetes: the install's namespace")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *kubeMode {
		return rotateKube(ctx, e, *kubeconfig, *namespace, *statusOnly, *force, fs.Args())
	}
	c := adminClient(*dataDir)
	var (
		resp *http.Response
		err  error
	)
	switch rest := fs.Args(); {
	case *statusOnly && len(rest) == 0:
		resp, err = c.Get("http://warden/rotation")
	case len(rest) == 1 && rest[0] == "abort":
		resp, err = c.Post("http://warden/rotation/abort", "", nil)
	case len(rest) == 1:
		if _, perr := ca.ParsePhase(rest[0]); perr != nil {
			return fmt.Errorf("%w: %v", errUsage, perr)
		}
		resp, err = c.Post(fmt.Sprintf("http://warden/rotation?to=%s&force=%t", rest[0], *force), "", nil)
	default:
		return fmt.Errorf("%w: want one of prepare, publish, activate, retire, abort, or --status", errUsage)
	}
	if err != nil {
		return fmt.Errorf("no warden serve answers on %s (is it running with --data-dir %s?): %w", filepath.Join(*dataDir, adminSocket), *dataDir, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return errors.New(strings.TrimSpace(b.String()))
	}
	var st rotationStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err
	}
	printRotation(e.stdout, st)
	return nil
}

func printRotation(w io.Writer, st rotationStatus) {
	fmt.Fprintf(w, "phase: %s (target %s%s)\n", st.Phase, st.Target, map[bool]string{true: ", forced"}[st.Force])
	fmt.Fprintf(w, "current root: sha256 %s, expires %s\n", st.CurrentRoot, st.CurrentExpires.UTC().Format(time.RFC3339))
	if st.NextRoot != "" {
		fmt.Fprintf(w, "new root:     sha256 %s\n", st.NextRoot)
	}
	for _, t := range []struct {
		name string
		at   time.Time
	}{{"prepared", st.PreparedAt}, {"published", st.PublishedAt}, {"activated", st.ActivatedAt}, {"retire after", st.RetireAfter}} {
		if !t.at.IsZero() {
			fmt.Fprintf(w, "%-13s %s\n", t.name+":", t.at.UTC().Format(time.RFC3339))
		}
	}
	printHolders(w, "", st.Consumers)
	for _, root := range st.Roots {
		role := "trusted"
		if root.Signing {
			role = "signs"
		}
		fmt.Fprintf(w, "bundle root sha256 %s (%s; %s, expires %s)\n", root.SHA256, role, root.Subject, root.NotAfter.UTC().Format(time.RFC3339))
		printHolders(w, "  ", root.Consumers)
	}
	if st.Plugged != "" {
		fmt.Fprintf(w, "plugged-in CA from %s: rotate it by editing the files (docs/ca.md)\n", st.Plugged)
	}
	if st.Waiting != "" {
		fmt.Fprintf(w, "waiting: %s\n", st.Waiting)
	}
}

func printHolders(w io.Writer, indent string, hs map[string]holdings) {
	names := make([]string, 0, len(hs))
	for n := range hs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		h := hs[n]
		fmt.Fprintf(w, "%s%s: %d of %d hold the %s\n", indent, n, h.Total-len(h.Missing), h.Total, map[bool]string{true: "new root", false: "root"}[indent == ""])
		for _, m := range h.Missing {
			fmt.Fprintf(w, "%s  missing: %s\n", indent, m)
		}
	}
}

// kubeRotation wires r for Kubernetes mode: the leader takes operators'
// requests from the rotation ConfigMap and reports its status there.
func kubeRotation(r *rotator, store *kube.RotationStore, replica string) {
	// Other replicas' streams: each reports its own while a new root is
	// published, and the leader counts the fresh reports.
	r.consumers["replicas"] = func(fp string) (int, []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reports, err := store.ReadReports(ctx)
		if err != nil {
			return 1, []string{"other replicas: " + err.Error()}
		}
		total, missing, now := 0, []string(nil), r.clock.Now()
		for _, rep := range reports {
			if rep.Replica == replica || now.Sub(rep.At) > replicaReportFresh {
				continue
			}
			if rep.NextRoot != fp {
				total++
				missing = append(missing, fmt.Sprintf("replica %s (has not taken up the new root yet)", rep.Replica))
				continue
			}
			total += rep.Total
			for _, m := range rep.Missing {
				missing = append(missing, "replica "+rep.Replica+": "+m)
			}
		}
		return total, missing
	}
	r.poll = func(ctx context.Context) {
		req, err := store.ReadRequest(ctx)
		if err != nil {
			r.log.Error("root rotation: reading requests", "error", err.Error())
			return
		}
		r.mu.Lock()
		if r.requestSeq == 0 {
			// A new leader: what was already taken is in the last report.
			if b, err := store.ReadStatus(ctx); err == nil {
				var st rotationStatus
				if json.Unmarshal(b, &st) == nil {
					r.requestSeq = st.RequestSeq
				}
			}
		}
		if req.Seq <= r.requestSeq {
			r.mu.Unlock()
			return
		}
		r.requestSeq = req.Seq
		r.mu.Unlock()
		if req.Abort {
			err = r.abort()
		} else {
			err = r.request(req.Target, req.Force)
		}
		r.mu.Lock()
		r.requestErr = ""
		if err != nil {
			r.requestErr = err.Error()
		}
		r.mu.Unlock()
	}
	r.report = func(ctx context.Context, st rotationStatus) {
		b, err := json.Marshal(st)
		if err == nil {
			err = store.WriteStatus(ctx, b)
		}
		if err != nil {
			r.log.Error("root rotation: writing the status", "error", err.Error())
		}
	}
	// Every replica reports (a heartbeat every few seconds, at once when
	// its view changes), so that the leader knows which replicas there
	// are and waits for a report on the new root from each.
	var last kube.ReplicaReport
	r.afterSync = func(ctx context.Context) {
		if ctx.Err() != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = store.DeleteReport(dctx, replica) // gone: not to be waited for
			return
		}
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		rep := kube.ReplicaReport{Replica: replica, At: r.clock.Now()}
		if st.Phase == ca.PhasePublished {
			rep.NextRoot = st.NextRootSHA256
			for _, name := range []string{"sds", "ads"} {
				if c := r.consumers[name]; c != nil {
					t, m := c(st.NextRootSHA256)
					rep.Total += t
					rep.Missing = append(rep.Missing, m...)
				}
			}
		}
		if rep.NextRoot == last.NextRoot && rep.Total == last.Total && slices.Equal(rep.Missing, last.Missing) && rep.At.Sub(last.At) < replicaReportFresh/3 {
			return
		}
		if err := store.WriteReport(ctx, rep); err != nil {
			r.log.Error("root rotation: reporting this replica's streams", "error", err.Error())
			return
		}
		last = rep
	}
}

// replicaReportFresh is how old a replica's report may be and still
// count: a replica that stopped reporting has gone, and its streams with it.
const replicaReportFresh = 15 * time.Second

// follow keeps a replica on the stored rotation until ctx is done.
func (r *rotator) follow(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last string
	for {
		if err := r.sync(ctx); err != nil && ctx.Err() == nil && err.Error() != last {
			last = err.Error()
			r.log.Error("root rotation: following the stored state", "error", last)
		}
		if r.afterSync != nil {
			r.afterSync(ctx)
		}
		select {
		case <-ctx.Done():
			if r.afterSync != nil {
				r.afterSync(ctx)
			}
			return nil
		case <-t.C:
		}
	}
}

// rotateKube asks an install's leader for a rotation step through the
// rotation ConfigMap, and prints the leader's report once it took it.
func rotateKube(ctx context.Context, e *env, kubeconfig, namespace string, statusOnly, force bool, rest []string) error {
	rc, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return err
	}
	store := &kube.RotationStore{Client: cs, Namespace: namespace, Clock: ca.SystemClock{}}
	read := func() (rotationStatus, error) {
		var st rotationStatus
		b, err := store.ReadStatus(ctx)
		if err != nil {
			return st, err
		}
		return st, json.Unmarshal(b, &st)
	}
	var req kube.RotationRequest
	switch {
	case statusOnly && len(rest) == 0:
		st, err := read()
		if err != nil {
			return err
		}
		printRotation(e.stdout, st)
		return nil
	case len(rest) == 1 && rest[0] == "abort":
		req.Abort = true
	case len(rest) == 1:
		if req.Target, err = ca.ParsePhase(rest[0]); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		req.Force = force
	default:
		return fmt.Errorf("%w: want one of prepare, publish, activate, retire, abort, or --status", errUsage)
	}
	seq, err := store.Request(ctx, req)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, err := read()
		if err != nil || st.RequestSeq < seq {
			continue
		}
		printRotation(e.stdout, st)
		if st.RequestError != "" {
			return errors.New(st.RequestError)
		}
		return nil
	}
	return fmt.Errorf("the leader of the install in %s did not take the request within 30 s (is warden serve running there?)", namespace)
}
