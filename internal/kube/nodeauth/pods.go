package nodeauth

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/kube/podcache"
)

// byAccountNode is the index of pods by service account and node.
const byAccountNode = "nodeauth.accountNode"

// Pods is the node authorizer's view of a cluster's pods: by namespace
// and name, and by (namespace/service account, node). Pods in phase
// Failed are left out (a pod that fails leaves the index as if deleted,
// as istiod's node authorizer, which does not watch them, has it). The
// pods come from the replica's pod cache (podcache), slimmed to what
// its readers read, the fields this authorizer decides on among them
// (podcache.Slim lists them). It answers from the cache, never asking
// the API server per request.
type Pods struct {
	Client kubernetes.Interface
	// Shared is the replica's pod cache, which its owner runs; nil: Run
	// watches pods itself.
	Shared *podcache.Cache
	Log    *slog.Logger

	mu      sync.Mutex
	cache   *podcache.Cache
	indexed bool
}

// Run indexes the pods (watching them, without Shared) until ctx is
// done.
func (p *Pods) Run(ctx context.Context) error {
	c := p.Shared
	if c == nil {
		var err error
		if c, err = podcache.New(p.Client, 0); err != nil {
			return fmt.Errorf("nodeauth: %w", err)
		}
	}
	// A shared cache may have listed already: client-go indexes the
	// pods it holds when the index is added.
	if err := c.Informer().AddIndexers(cache.Indexers{byAccountNode: accountNodeKeys}); err != nil {
		return fmt.Errorf("nodeauth: %w", err)
	}
	if p.Shared == nil {
		c.Start(ctx.Done())
		defer c.Shutdown()
	}
	p.mu.Lock()
	p.cache, p.indexed = c, true
	p.mu.Unlock()
	if err := c.WaitSynced(ctx); err != nil {
		return nil // stopped before the first list finished: not a failure
	}
	if p.Log != nil {
		p.Log.Debug("pods for node authorization listed", "pods", len(c.Informer().GetStore().ListKeys()))
	}
	<-ctx.Done()
	return nil
}

// HasSynced says whether the first list has completed.
func (p *Pods) HasSynced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.indexed && p.cache.HasSynced()
}

// store is the cache's indexer once listed and indexed, else nil.
func (p *Pods) store() cache.Indexer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.indexed || !p.cache.HasSynced() {
		return nil
	}
	return p.cache.Informer().GetIndexer()
}

// Get is pod ns/name, or nil (also when it has failed).
func (p *Pods) Get(ns, name string) *corev1.Pod {
	s := p.store()
	if s == nil {
		return nil
	}
	o, ok, err := s.GetByKey(ns + "/" + name)
	if err != nil || !ok {
		return nil
	}
	pod, _ := o.(*corev1.Pod)
	if pod == nil || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	return pod
}

// OnNode counts the pods of service account ns/sa on node, failed ones
// left out.
func (p *Pods) OnNode(ns, sa, node string) int {
	s := p.store()
	if s == nil {
		return 0
	}
	keys, err := s.IndexKeys(byAccountNode, accountNodeKey(ns, sa, node))
	if err != nil {
		return 0
	}
	return len(keys)
}

// accountNodeKey joins names none of which may hold a '/'.
func accountNodeKey(ns, sa, node string) string { return node + "/" + ns + "/" + sa }

// accountNodeKeys indexes a scheduled pod by its account and node; a pod
// not yet on a node, or without an account, is not indexed (as
// istiod's), nor is a failed one (istiod's watch leaves them out).
func accountNodeKeys(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" || p.Spec.ServiceAccountName == "" || p.Status.Phase == corev1.PodFailed {
		return nil, nil
	}
	return []string{accountNodeKey(p.Namespace, p.Spec.ServiceAccountName, p.Spec.NodeName)}, nil
}
