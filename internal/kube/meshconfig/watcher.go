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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube"
)

// Watcher watches every kind in api.Kinds through informers and keeps
// the decoded objects. An object the strict decoder rejects is logged and
// left out, never half-applied.
//
// With Discovery set, it watches only the kinds the API server serves,
// each in the first served of its versions (the storage version first,
// then the newest): a cluster with Istio's CRDs has no legacy
// authentication.istio.io and rbac.istio.io kinds, and an older Istio's
// may not serve v1 yet. The kinds it does not serve are logged and looked
// for again every Recheck; they hold nothing up. Without Discovery every
// kind is watched in its storage version, and Synced waits for all.
type Watcher struct {
	Client    dynamic.Interface
	Discovery discovery.DiscoveryInterface // nil: watch every kind
	Log       *slog.Logger
	Resync    time.Duration // default 10m
	Recheck   time.Duration // default 1m: how often kinds not served are looked for
	OnChange  func()        // called after every change

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
	if w.Recheck == 0 {
		w.Recheck = time.Minute
	}
	w.mu.Lock()
	w.objects = map[string]api.Object{}
	w.rejected = map[string]string{}
	if w.synced == nil {
		w.synced = make(chan struct{})
	}
	w.mu.Unlock()
	f := dynamicinformer.NewDynamicSharedInformerFactory(w.Client, w.Resync)
	watch := func(gvr schema.GroupVersionResource) error {
		_, err := f.ForResource(gvr).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    w.put,
			UpdateFunc: func(_, n any) { w.put(n) },
			DeleteFunc: w.remove,
		})
		return err
	}
	served, missing := w.served()
	if len(missing) > 0 {
		w.Log.Warn("the API server serves no CustomResourceDefinition for some kinds warden reads: it reads none of them until one is installed (warden's own: kubectl apply -k deploy/crds)", "kinds", kindNames(missing))
	}
	for _, gvr := range served {
		if err := watch(gvr); err != nil {
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
	for len(missing) > 0 {
		select {
		case <-ctx.Done():
			f.Shutdown()
			return nil
		case <-time.After(w.Recheck):
		}
		var now []schema.GroupVersionResource
		now, missing = w.served()
		for _, gvr := range now {
			if slices.ContainsFunc(served, func(s schema.GroupVersionResource) bool { return s.GroupResource() == gvr.GroupResource() }) {
				continue
			}
			if err := watch(gvr); err != nil {
				return err
			}
			served = append(served, gvr)
			w.Log.Info("the API server now serves a kind warden reads: watching it", "kind", gvr.Resource+"."+gvr.Group, "version", gvr.Version)
		}
		f.Start(ctx.Done())
	}
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// served is, for each kind in api.Kinds the API server serves, the
// resource to watch it at, and the kinds it does not serve. Without
// Discovery, or when the API server cannot say, a kind is watched in its
// storage version (its informer retries until it lists).
func (w *Watcher) served() (served []schema.GroupVersionResource, missing []api.Kind) {
	resources := map[string]map[string]bool{} // group/version -> plural -> served
	servedAt := func(gv, plural string) bool {
		if w.Discovery == nil {
			return true
		}
		rs, ok := resources[gv]
		if !ok {
			rs = map[string]bool{}
			list, err := w.Discovery.ServerResourcesForGroupVersion(gv)
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				rs = nil // unknown: assume served
			default:
				for _, r := range list.APIResources {
					rs[r.Name] = true
				}
			}
			resources[gv] = rs
		}
		return rs == nil || rs[plural]
	}
	for _, k := range api.Kinds {
		versions := append([]string{k.Storage}, k.Versions...)
		slices.Reverse(versions[1:]) // newest first after the storage version
		found := false
		for _, v := range versions {
			if servedAt(k.Group+"/"+v, k.Plural) {
				served = append(served, schema.GroupVersionResource{Group: k.Group, Version: v, Resource: k.Plural})
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, k)
		}
	}
	return served, missing
}

func kindNames(ks []api.Kind) string {
	var out []string
	for _, k := range ks {
		out = append(out, k.Plural+"."+k.Group)
	}
	return strings.Join(out, ", ")
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
		// An invalid edit loses nothing: the version in effect stays
		// (a DENY policy whose edit broke it still denies), as a proxy
		// keeps its last configuration when it refuses an update; an
		// invalid new object is left out. Either way it is reported.
		w.mu.Lock()
		_, kept := w.objects[key]
		why := fmt.Sprint(err)
		if kept {
			why += " (the previous version stays in effect)"
		}
		w.rejected[key] = why
		w.mu.Unlock()
		if kept {
			w.Log.Error("invalid config object; keeping its previous version", "kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "error", fmt.Sprint(err))
		} else {
			w.Log.Error("ignoring invalid config object", "kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "error", fmt.Sprint(err))
		}
		w.changed()
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
