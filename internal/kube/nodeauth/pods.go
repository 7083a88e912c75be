package nodeauth

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/kube"
)

// notFailed is the watch's field selector: pods in phase Failed are not
// seen at all (a pod that fails leaves the index as if deleted), as
// istiod's node authorizer watches them.
const notFailed = "status.phase!=" + string(corev1.PodFailed)

// byAccountNode is the index of pods by service account and node.
const byAccountNode = "accountNode"

// Pods is the node authorizer's view of a cluster's pods: by namespace
// and name, and by (namespace/service account, node). Pods in phase
// Failed are left out by the watch itself; each pod is kept slimmed to
// what the authorizer reads. It answers from its cache, never asking the
// API server per request.
type Pods struct {
	Client kubernetes.Interface
	Resync time.Duration // default 0: none (the index needs no resync)
	Log    *slog.Logger

	mu       sync.Mutex
	informer cache.SharedIndexInformer
	synced   bool
}

// Run watches pods until ctx is done.
func (p *Pods) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(p.Client, p.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = notFailed }))
	inf := f.Core().V1().Pods().Informer()
	if err := inf.SetTransform(slimPod); err != nil {
		return fmt.Errorf("nodeauth: %w", err)
	}
	if err := inf.AddIndexers(cache.Indexers{byAccountNode: accountNodeKeys}); err != nil {
		return fmt.Errorf("nodeauth: %w", err)
	}
	p.mu.Lock()
	p.informer = inf
	p.mu.Unlock()
	if err := kube.StartAndSync(ctx, "pods for node authorization", f); err != nil {
		f.Shutdown()
		if ctx.Err() != nil {
			return nil // stopped before the first list finished: not a failure
		}
		return fmt.Errorf("nodeauth: %w", err)
	}
	p.mu.Lock()
	p.synced = true
	p.mu.Unlock()
	if p.Log != nil {
		p.Log.Debug("pods for node authorization listed", "pods", len(inf.GetStore().ListKeys()))
	}
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// HasSynced says whether the first list has completed.
func (p *Pods) HasSynced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.synced
}

// store is the informer's indexer once Run has listed, else nil.
func (p *Pods) store() cache.Indexer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.synced {
		return nil
	}
	return p.informer.GetIndexer()
}

// Get is pod ns/name, or nil.
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
	return pod
}

// OnNode counts the pods of service account ns/sa on node.
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
// not yet on a node, or without an account, is not indexed (as istiod's).
func accountNodeKeys(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" || p.Spec.ServiceAccountName == "" {
		return nil, nil
	}
	return []string{accountNodeKey(p.Namespace, p.Spec.ServiceAccountName, p.Spec.NodeName)}, nil
}

// slimPod keeps what the authorizer reads: a cluster's pods are many,
// and their specs and statuses large.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion},
		Spec:       corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName},
	}, nil
}
