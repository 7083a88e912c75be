// Package leader elects, through a Lease in the install's namespace, the
// replica that writes the objects the replicas share.
package leader

import (
	"context"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election runs Lead while this replica holds the Lease; only the leader
// writes shared objects (bundle ConfigMaps, per-SA Secrets). Every replica
// keeps signing regardless.
type Election struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // Lease name, default "warden-leader"
	Identity  string // this replica, e.g. the pod name
	Log       *slog.Logger
	Lead      func(ctx context.Context)
}

// Run campaigns until ctx is done, running Lead whenever elected.
func (l *Election) Run(ctx context.Context) {
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	name := l.Name
	if name == "" {
		name = "warden-leader"
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: l.Namespace},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			ReleaseOnCancel: true,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					l.Log.Info("elected leader", "identity", l.Identity)
					l.Lead(ctx)
				},
				OnStoppedLeading: func() { l.Log.Info("stopped leading", "identity", l.Identity) },
			},
		})
	}
}
