// Package meshconfig reads the mesh configuration from the API server:
// every Istio kind warden reads (api.Kinds; the Istio CRDs, not Istio's
// MeshConfig), decoded strictly. Watcher follows it for serve; Snapshot
// lists it once, with the service registry, for one-shot commands.
package meshconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube"
)

// Watcher watches every kind in api.Kinds through informers and keeps
// the decoded objects. An object the strict decoder rejects is logged and
// left out, never half-applied.
type Watcher struct {
	Client   dynamic.Interface
	Log      *slog.Logger
	Resync   time.Duration // default 10m
	OnChange func()        // called after every change

	mu       sync.RWMutex
	objects  map[string]api.Object // kind/namespace/name -> object
	rejected map[string]string     // kind/namespace/name -> why it is left out
	synced   chan struct{}
}

func configKey(kind, ns, name string) string { return kind + "/" + ns + "/" + name }

// Run watches until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	if w.Log == nil {
		w.Log = slog.New(slog.DiscardHandler)
	}
	if w.Resync == 0 {
		w.Resync = 10 * time.Minute
	}
	w.mu.Lock()
	w.objects = map[string]api.Object{}
	w.rejected = map[string]string{}
	if w.synced == nil {
		w.synced = make(chan struct{})
	}
	w.mu.Unlock()
	f := dynamicinformer.NewDynamicSharedInformerFactory(w.Client, w.Resync)
	for _, k := range api.Kinds {
		gvr := schema.GroupVersionResource{Group: k.Group, Version: k.Storage, Resource: k.Plural}
		inf := f.ForResource(gvr).Informer()
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    w.put,
			UpdateFunc: func(_, n any) { w.put(n) },
			DeleteFunc: w.remove,
		}); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	for gvr, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				f.Shutdown()
				return nil // stopped before the first list finished: not a failure
			}
			return fmt.Errorf("kube: %s cache did not sync", gvr.Resource)
		}
	}
	close(w.synced)
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// Synced is closed once every informer has listed its objects.
func (w *Watcher) Synced() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.synced == nil {
		w.synced = make(chan struct{})
	}
	return w.synced
}

func (w *Watcher) put(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	b, err := json.Marshal(u.Object)
	if err != nil {
		return
	}
	objs, err := api.Decode(b)
	key := configKey(u.GetKind(), u.GetNamespace(), u.GetName())
	if err != nil || len(objs) != 1 {
		w.Log.Error("ignoring invalid config object", "kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "error", fmt.Sprint(err))
		w.mu.Lock()
		w.rejected[key] = fmt.Sprint(err)
		w.mu.Unlock()
		w.removeKey(key)
		return
	}
	w.mu.Lock()
	w.objects[key] = objs[0]
	delete(w.rejected, key)
	w.mu.Unlock()
	w.changed()
}

// Rejected lists the objects left out for failing to decode, as
// "Kind/namespace/name: error", sorted (metrics, warden check).
func (w *Watcher) Rejected() []string {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]string, 0, len(w.rejected))
	for k, why := range w.rejected {
		out = append(out, k+": "+why)
	}
	sort.Strings(out)
	return out
}

func (w *Watcher) remove(obj any) {
	if u, ok := kube.Tombstone(obj).(*unstructured.Unstructured); ok {
		key := configKey(u.GetKind(), u.GetNamespace(), u.GetName())
		w.mu.Lock()
		delete(w.rejected, key)
		w.mu.Unlock()
		w.removeKey(key)
	}
}

func (w *Watcher) removeKey(key string) {
	w.mu.Lock()
	delete(w.objects, key)
	w.mu.Unlock()
	w.changed()
}

func (w *Watcher) changed() {
	if w.OnChange != nil {
		w.OnChange()
	}
}

// List returns the current objects, ordered by kind, namespace and name.
func (w *Watcher) List() []api.Object {
	w.mu.RLock()
	keys := make([]string, 0, len(w.objects))
	for k := range w.objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]api.Object, 0, len(keys))
	for _, k := range keys {
		out = append(out, w.objects[k])
	}
	w.mu.RUnlock()
	return out
}
