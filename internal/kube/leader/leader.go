// Package leader elects, through a Lease in the install's namespace, the
// replica that writes the objects the replicas share.
package leader

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"

	"github.com/wardenmesh/warden/internal/check"
)

// Timing of the Lease. The Lease outlives two renewal deadlines, so that
// a leader that stops at its first failed renewal (or at the latest at
// its deadline) has stopped its work well before another replica can
// take the Lease.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 7 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Election runs Lead while this replica holds the Lease; only the leader
// writes shared objects (bundle ConfigMaps, per-SA Secrets). Every replica
// keeps signing regardless.
//
// Lead's context ends at the first renewal of the Lease that fails (not
// when the renewal deadline passes, nor after the Lease is released), and
// Lead must return before this replica campaigns again: so one replica's
// leader work has stopped before its Lease can expire, and two never
// overlap.
type Election struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // Lease name, default "warden-leader"
	Identity  string // this replica, e.g. the pod name
	Log       *slog.Logger
	Lead      func(ctx context.Context)

	leading atomic.Bool
}

// Leading says whether this replica leads now (its work is running).
func (l *Election) Leading() bool { return l.leading.Load() }

// Run campaigns until ctx is done, running Lead whenever elected.
func (l *Election) Run(ctx context.Context) {
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	name := l.Name
	if name == "" {
		name = LeaseName
	}
	base := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: l.Namespace},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity},
	}
	for ctx.Err() == nil {
		l.round(ctx, base)
	}
}

// round is one campaign: acquire, lead, and stop leading.
func (l *Election) round(ctx context.Context, base resourcelock.Interface) {
	round, endRound := context.WithCancel(ctx)
	defer endRound()
	var mu sync.Mutex
	var stopWork context.CancelFunc // set while leading
	lock := &watchedLock{Interface: base, failed: func(err error) {
		mu.Lock()
		stop := stopWork
		stopWork = nil
		mu.Unlock()
		if stop != nil {
			l.Log.Warn("the leader's Lease could not be renewed: stopping the leader's work now, before the Lease can expire", "identity", l.Identity, "error", err.Error())
			stop()
			endRound() // and give the Lease up (or let it expire)
		}
	}}
	done := make(chan struct{})
	started := false
	leaderelection.RunOrDie(round, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   LeaseDuration,
		RenewDeadline:   RenewDeadline,
		RetryPeriod:     RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				defer close(done)
				work, cancel := context.WithCancel(lctx)
				defer cancel()
				mu.Lock()
				started, stopWork = true, cancel
				mu.Unlock()
				l.Log.Info("elected leader", "identity", l.Identity)
				l.leading.Store(true)
				defer l.leading.Store(false)
				l.Lead(work)
			},
			OnStoppedLeading: func() {
				mu.Lock()
				stop := stopWork
				stopWork = nil
				mu.Unlock()
				if stop != nil {
					stop()
				}
			},
		},
	})
	mu.Lock()
	wasLeader := started
	mu.Unlock()
	if wasLeader {
		<-done // the leader's work has returned before the next campaign
		l.Log.Info("stopped leading", "identity", l.Identity)
	}
}

// watchedLock is a Lease lock that reports a failed read or write of the
// Lease as it happens.
type watchedLock struct {
	resourcelock.Interface
	failed func(error)
}

func (w *watchedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	r, raw, err := w.Interface.Get(ctx)
	if err != nil && !apierrors.IsNotFound(err) {
		w.failed(err)
	}
	return r, raw, err
}

func (w *watchedLock) Update(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	err := w.Interface.Update(ctx, ler)
	if err != nil {
		w.failed(err)
	}
	return err
}

// LeaseName is the Lease an install's replicas campaign for (Election's
// default).
const LeaseName = "warden-leader"

// Check says whether a replica of the install in namespace leads now:
// its Lease is held and was renewed within its duration. Without a
// leader the trust bundle's copies are not kept and a root rotation does
// not advance, while every replica keeps signing.
func Check(ctx context.Context, cs kubernetes.Interface, namespace string, now time.Time) check.Result {
	l, err := cs.CoordinationV1().Leases(namespace).Get(ctx, LeaseName, metav1.GetOptions{})
	const without = "the trust bundle's copies are not kept and a root rotation does not advance (the replicas still sign)"
	switch {
	case apierrors.IsNotFound(err):
		return check.Result{Check: "leader", Status: check.Error, Message: fmt.Sprintf("no Lease %s/%s: no replica has ever led, so %s; is warden serve running in %s, and may it write the Lease?", namespace, LeaseName, without, namespace)}
	case err != nil:
		return check.Result{Check: "leader", Status: check.Error, Message: fmt.Sprintf("lease %s/%s: %v", namespace, LeaseName, err)}
	}
	holder := ptr.Deref(l.Spec.HolderIdentity, "")
	var renewed time.Time
	if l.Spec.RenewTime != nil {
		renewed = l.Spec.RenewTime.Time
	}
	expires := renewed.Add(time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second)
	switch {
	case holder == "":
		return check.Result{Check: "leader", Status: check.Error, Message: fmt.Sprintf("no replica holds Lease %s/%s (its last holder released it %s ago): %s; is warden serve running in %s?", namespace, LeaseName, now.Sub(renewed).Round(time.Second), without, namespace)}
	case now.After(expires):
		return check.Result{Check: "leader", Status: check.Error, Message: fmt.Sprintf("Lease %s/%s of replica %s expired %s ago: no replica leads, so %s; the replicas' logs say why (an API server they cannot reach? RBAC on leases?)", namespace, LeaseName, holder, now.Sub(expires).Round(time.Second), without)}
	}
	return check.Result{Check: "leader", Status: check.OK, Message: fmt.Sprintf("replica %s leads (Lease %s/%s renewed %s ago)", holder, namespace, LeaseName, max(now.Sub(renewed), 0).Round(time.Second))}
}

// Holder is the replica that holds the Lease ("" when none does).
func Holder(ctx context.Context, cs kubernetes.Interface, namespace string) (string, error) {
	l, err := cs.CoordinationV1().Leases(namespace).Get(ctx, LeaseName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return ptr.Deref(l.Spec.HolderIdentity, ""), nil
}
