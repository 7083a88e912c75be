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
