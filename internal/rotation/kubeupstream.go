package rotation

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
)

// KubeUpstreamStore keeps an Upstream's state in the API server (the
// rotation ConfigMap's key "upstream"), where every replica follows it
// and a new leader resumes from it. Reads come from the watch's cache
// once KubeUpstream's watch has synced.
type KubeUpstreamStore struct {
	Store *rotationstore.Store

	mu   sync.Mutex
	raw  string // the state last read, and as parsed
	last UpstreamState
}

var _ UpstreamStore = (*KubeUpstreamStore)(nil)

// kubeStoreTimeout bounds one read or write of the state.
const kubeStoreTimeout = 10 * time.Second

// Load reads the state; found is false until a leader has saved one.
func (k *KubeUpstreamStore) Load() (UpstreamState, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubeStoreTimeout)
	defer cancel()
	raw, found, err := k.Store.Upstream(ctx)
	if err != nil || !found {
		return UpstreamState{}, false, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if raw != k.raw {
		st, err := decodeUpstream([]byte(raw))
		if err != nil {
			return st, false, fmt.Errorf("configmap %s/%s, key upstream: %w; it is warden's record of the roots it publishes and retires: remove the key to start afresh (warden then trusts Vault's current root alone, and leaves under a root it was retiring stop verifying)", k.Store.Namespace, rotationstore.ConfigMap, err)
		}
		k.raw, k.last = raw, st
	}
	st := k.last
	st.Old = slices.Clone(st.Old) // the caller's to change
	return st, true, nil
}

// Save writes the state.
func (k *KubeUpstreamStore) Save(st UpstreamState) error {
	b, err := encodeUpstream(st)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), kubeStoreTimeout)
	defer cancel()
	return k.Store.SaveUpstream(ctx, string(b))
}

// KubeUpstream wires u, whose Store is a KubeUpstreamStore over store
// and whose Leading says whether this replica leads, for Kubernetes
// mode: as for the self-signed root (Kube), the leader decides
// activation for every replica, counting the others' streams from their
// reports and the install's pods, while each replica reports its own
// (own's per-replica consumers) as long as a new root is published;
// every replica follows the saved state through a watch.
func KubeUpstream(u *Upstream, store *rotationstore.Store, replica string, own *bundle.Set) {
	u.replicas = func(fp string, publishing bool, publishedAt time.Time) (int, []string) {
		return replicasMissing(store, replica, fp, publishing, publishedAt, u.clock.Now(), u.cfg.Log)
	}
	u.watch = store.Watch
	rep := newReplicaReporter(store, replica, u.clock, u.cfg.Log)
	var lastGC time.Time
	u.afterStep = func(ctx context.Context) {
		if ctx.Err() != nil {
			return // leave removes the report
		}
		u.mu.Lock()
		next := u.st.Next
		u.mu.Unlock()
		fp := ""
		if next != nil {
			fp = ca.Fingerprint(next)
		}
		rep.report(ctx, fp, own.Of(bundle.PerReplica))
		if now := u.clock.Now(); fp == "" && u.leads() && now.Sub(lastGC) >= reportGCEvery {
			lastGC = now
			collectReports(ctx, store, replica, now, u.cfg.Log)
		}
	}
	u.leave = rep.leave
}
