package leader_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/leader"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestLeaderElectionOneAtATime(t *testing.T) {
	ns := apiserver.Namespace(t, "lease")
	var leading, maxLeading atomic.Int32
	var led [2]atomic.Bool
	ctxs := make([]context.CancelFunc, 2)
	for i := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		t.Cleanup(cancel)
		l := &leader.Election{Client: apiserver.Client, Namespace: ns, Identity: fmt.Sprintf("replica-%d", i), Lead: func(ctx context.Context) {
			n := leading.Add(1)
			for {
				m := maxLeading.Load()
				if n <= m || maxLeading.CompareAndSwap(m, n) {
					break
				}
			}
			led[i].Store(true)
			<-ctx.Done()
			leading.Add(-1)
		}}
		go l.Run(ctx)
	}
	var first int
	kubetest.Eventually(t, 20*time.Second, func() error {
		for i := range 2 {
			if led[i].Load() {
				first = i
				return nil
			}
		}
		return errors.New("no leader")
	})
	ctxs[first]() // the leader goes away and releases the lease
	kubetest.Eventually(t, 30*time.Second, func() error {
		if !led[1-first].Load() {
			return errors.New("no takeover")
		}
		return nil
	})
	if maxLeading.Load() != 1 {
		t.Fatalf("%d replicas led at once", maxLeading.Load())
	}
}

// TestPartitionedLeaderStopsBeforeItsLeaseExpires: the leader's path to
// the API server is blackholed (a TCP proxy that stops answering without
// closing anything, so its requests hang). Its work stops at
// the first failed renewal, before its Lease can expire, and so before
// the other replica, which waits for the Lease to expire, starts
// leading: the two never lead at once, however long the cut lasts, and
// the old leader does not start again when its path comes back while the
// other leads.
func TestPartitionedLeaderStopsBeforeItsLeaseExpires(t *testing.T) {
	ns := apiserver.Namespace(t, "lease")
	link := apiserver.Link(t)
	cut, err := clientcmd.BuildConfigFromFlags("", link.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ start, stop atomic.Int64 } // unix nanoseconds
	var spans [2]span
	var leading, maxLeading atomic.Int32
	run := func(i int, cs kubernetes.Interface) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		l := &leader.Election{Client: cs, Namespace: ns, Identity: fmt.Sprintf("replica-%d", i), Lead: func(ctx context.Context) {
			if n := leading.Add(1); n > maxLeading.Load() {
				maxLeading.Store(n)
			}
			spans[i].start.Store(time.Now().UnixNano())
			<-ctx.Done()
			spans[i].stop.Store(time.Now().UnixNano())
			leading.Add(-1)
		}}
		go l.Run(ctx)
	}
	run(0, kubernetes.NewForConfigOrDie(cut))
	kubetest.Eventually(t, 20*time.Second, func() error {
		if spans[0].start.Load() == 0 {
			return errors.New("replica-0 does not lead yet")
		}
		return nil
	})
	run(1, apiserver.Client)
	lease, err := apiserver.Client.CoordinationV1().Leases(ns).Get(kubetest.Context(t), "warden-leader", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	link.Blackhole() // requests hang rather than fail: the harder case
	kubetest.Eventually(t, 60*time.Second, func() error {
		if spans[1].start.Load() == 0 {
			return errors.New("replica-1 has not taken over")
		}
		return nil
	})
	link.Restore(t)
	// Renewals after the Get above only move the expiry later: the earliest
	// it could be is the one read.
	expiry := lease.Spec.RenewTime.Add(leader.LeaseDuration)
	stop0, start1 := time.Unix(0, spans[0].stop.Load()), time.Unix(0, spans[1].start.Load())
	switch {
	case spans[0].stop.Load() == 0:
		t.Fatal("replica-0 never stopped leading")
	case !stop0.Before(expiry):
		t.Fatalf("replica-0 stopped at %s, after its Lease could expire (%s)", stop0.Format(time.RFC3339Nano), expiry.Format(time.RFC3339Nano))
	case !stop0.Before(start1):
		t.Fatalf("replica-0 stopped at %s, after replica-1 started at %s", stop0.Format(time.RFC3339Nano), start1.Format(time.RFC3339Nano))
	}
	time.Sleep(2 * leader.RetryPeriod) // replica-0 campaigns again, through the restored path
	if maxLeading.Load() != 1 || spans[0].start.Load() > spans[0].stop.Load() {
		t.Fatalf("two replicas led at once (max %d)", maxLeading.Load())
	}
}
