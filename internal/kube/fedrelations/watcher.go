// Package fedrelations reads SPIFFE Federation relationships from
// ClusterFederatedTrustDomain objects (federation.wardenmesh.io/v1alpha1,
// deploy/crds) on every replica, adds them to the relationships file's,
// and hands the set in effect to the federation bundles; the leader writes
// each object's status (WriteStatus), which is what an operator sees in
// kubectl get and describe.
//
// The spec is parsed by federation.ParseSpec, the validation of a file
// entry, and the set is checked by federation.Combine: the file's
// relationships first, then the objects by name. An object refused there
// (it fails validation, or names a trust domain or an endpoint the file or
// an object of an earlier name already names) is refused by name and the
// others keep working; a refused edit of an object in effect keeps its
// previous version in effect.
package fedrelations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/federation"
)

// The kind warden reads.
const (
	Group   = "federation.wardenmesh.io"
	Version = "v1alpha1"
	Kind    = "ClusterFederatedTrustDomain"
)

// GVR is the kind's resource.
var GVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "clusterfederatedtrustdomains"}

// Watcher follows the ClusterFederatedTrustDomain objects and the
// relationships file's set (SetFile), and hands their union to Set
// whenever either changes.
type Watcher struct {
	Client dynamic.Interface
	// Discovery says whether the API server serves the kind; nil:
	// assume it does.
	Discovery discovery.DiscoveryInterface
	// Local is warden's own trust domain, which no relationship names.
	Local spiffeid.TrustDomain
	// Set receives the relationships in effect (federation.Bundles'
	// SetRelationships).
	Set     func([]*federation.Relationship) (bool, error)
	Log     *slog.Logger
	Clock   ca.Clock
	Resync  time.Duration // default 10m
	Recheck time.Duration // default 1m: how often a kind not served is looked for

	mu     sync.Mutex
	file   []*federation.Relationship
	objs   map[string]*object
	logged map[string]string // object name -> the last refusal logged
	kick   chan struct{}     // the outcomes changed: statuses to write
	synced chan struct{}
	once   sync.Once
}

// object is one ClusterFederatedTrustDomain as the watcher holds it.
type object struct {
	u        *unstructured.Unstructured
	current  *federation.Relationship // nil: the spec does not parse
	parseErr error
	// previous is the last version taken, of generation prevGen, tried
	// when current is refused.
	previous *federation.Relationship
	prevGen  int64
	outcome  federation.Outcome
}

func (w *Watcher) init() {
	w.once.Do(func() {
		if w.Log == nil {
			w.Log = slog.New(slog.DiscardHandler)
		}
		if w.Clock == nil {
			w.Clock = ca.SystemClock{}
		}
		if w.Resync == 0 {
			w.Resync = 10 * time.Minute
		}
		if w.Recheck == 0 {
			w.Recheck = time.Minute
		}
		w.mu.Lock()
		w.objs = map[string]*object{}
		w.logged = map[string]string{}
		w.kick = make(chan struct{}, 1)
		w.synced = make(chan struct{})
		w.mu.Unlock()
	})
}

// SetFile replaces the relationships file's set (a consistent set, as
// federation.LoadFile returns it) and hands the new union to Set. It
// reports whether the relationships in effect changed.
func (w *Watcher) SetFile(rels []*federation.Relationship) (bool, error) {
	w.init()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.file = rels
	return w.apply()
}

// Synced is closed once the objects have been listed (never when the
// API server does not serve the kind).
func (w *Watcher) Synced() <-chan struct{} {
	w.init()
	return w.synced
}

// Run watches the objects until ctx is done. When the API server does
// not serve the kind it says so once and looks again every Recheck: the
// file's relationships work meanwhile.
func (w *Watcher) Run(ctx context.Context) error {
	w.init()
	for said := false; !w.served(); said = true {
		if !said {
			w.Log.Info("federation: the API server serves no ClusterFederatedTrustDomain ("+GVR.Resource+"."+Group+"/"+Version+"): relationships come from --federation-file alone until its CRD is installed (deploy/crds)", "recheck", w.Recheck.String())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(w.Recheck):
		}
	}
	inf := dynamicinformer.NewFilteredDynamicInformer(w.Client, GVR, "", w.Resync, cache.Indexers{}, nil).Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.put,
		UpdateFunc: func(_, n any) { w.put(n) },
		DeleteFunc: w.remove,
	}); err != nil {
		return err
	}
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // stopped before the first list finished
	}
	close(w.synced)
	<-ctx.Done()
	return nil
}

// served says whether the API server serves the kind (yes when it cannot
// say: the informer retries until it lists).
func (w *Watcher) served() bool {
	if w.Discovery == nil {
		return true
	}
	list, err := w.Discovery.ServerResourcesForGroupVersion(GVR.GroupVersion().String())
	switch {
	case apierrors.IsNotFound(err):
		return false
	case err != nil:
		return true
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == GVR.Resource })
}

func (w *Watcher) put(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	o := w.objs[u.GetName()]
	if o == nil || o.u.GetUID() != u.GetUID() {
		o = &object{} // new, or deleted and created again: nothing of the old one carries over
		w.objs[u.GetName()] = o
	} else if o.u.GetGeneration() == u.GetGeneration() {
		o.u = u // a status write, or a resync: the spec is the one parsed
		if o.previous != nil || !o.lastAccepted(w.Local) {
			return
		}
	}
	o.u = u
	o.current, o.parseErr = parse(u, w.Local)
	if o.previous == nil {
		// A replica that did not see the last generation taken (it
		// started after a refused edit) takes it from the status, so
		// that every replica keeps the same version in effect.
		o.lastAccepted(w.Local)
	}
	if _, err := w.apply(); err != nil {
		w.Log.Error("federation: ClusterFederatedTrustDomain objects not applied", "error", err.Error())
	}
}

func (w *Watcher) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if o := w.objs[u.GetName()]; o == nil || o.u.GetUID() != u.GetUID() {
		return
	}
	delete(w.objs, u.GetName())
	delete(w.logged, u.GetName())
	w.Log.Info("federation: ClusterFederatedTrustDomain deleted", "name", u.GetName())
	if _, err := w.apply(); err != nil {
		w.Log.Error("federation: ClusterFederatedTrustDomain objects not applied", "error", err.Error())
	}
}

// lastAccepted takes the last generation taken from o's status
// (status.lastAccepted, written by the leader) as o's previous version,
// and says whether there was one. The spec there is parsed and checked
// like the object's own.
func (o *object) lastAccepted(local spiffeid.TrustDomain) bool {
	spec, ok, _ := unstructured.NestedString(o.u.Object, "status", "lastAccepted", "spec")
	gen, _, _ := unstructured.NestedInt64(o.u.Object, "status", "lastAccepted", "generation")
	if !ok || spec == "" {
		return false
	}
	r, err := federation.ParseSpec([]byte(spec), local)
	if err != nil {
		return false
	}
	o.previous, o.prevGen = r, gen
	return true
}

// parse reads u's spec (strictly, as every kind warden reads).
func parse(u *unstructured.Unstructured, local spiffeid.TrustDomain) (*federation.Relationship, error) {
	spec, ok := u.Object["spec"]
	if !ok {
		return nil, errors.New("no spec")
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	return federation.ParseSpec(b, local)
}

// apply combines the file's relationships and the objects' (by name),
// logs what changed for each object, and hands the set to Set; w.mu is
// held.
func (w *Watcher) apply() (bool, error) {
	names := make([]string, 0, len(w.objs))
	for n := range w.objs {
		names = append(names, n)
	}
	slices.Sort(names)
	cands := make([]federation.Candidate, len(names))
	for i, n := range names {
		o := w.objs[n]
		cands[i] = federation.Candidate{Name: n, Current: o.current, Invalid: o.parseErr, Previous: o.previous}
	}
	rels, outs := federation.Combine(w.Local, w.file, cands)
	for i, n := range names {
		o, out := w.objs[n], outs[i]
		if out.InEffect != nil && out.InEffect == o.current {
			o.previous, o.prevGen = o.current, o.u.GetGeneration()
		}
		o.outcome = out
		msg := ""
		if out.Err != nil {
			msg = out.Err.Error()
		}
		if w.logged[n] == msg {
			continue
		}
		w.logged[n] = msg
		switch {
		case out.Err == nil:
			w.Log.Info("federation: ClusterFederatedTrustDomain in effect", "name", n, "trustDomain", out.InEffect.TrustDomain.Name(),
				"url", out.InEffect.URL, "namespaces", strings.Join(out.InEffect.Namespaces, ","))
		case out.InEffect != nil:
			w.Log.Error("federation: ClusterFederatedTrustDomain refused; its previous version stays in effect", "name", n, "generation", o.u.GetGeneration(),
				"inEffect", o.prevGen, "error", msg)
		default:
			w.Log.Error("federation: ClusterFederatedTrustDomain refused", "name", n, "error", msg)
		}
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
	if w.Set == nil {
		return false, nil
	}
	return w.Set(rels)
}

// describe is a relationship in a status message.
func describe(r *federation.Relationship) string {
	ns := "no namespace"
	switch {
	case slices.Contains(r.Namespaces, federation.AllNamespaces):
		ns = "every namespace"
	case len(r.Namespaces) > 0:
		ns = "namespaces " + strings.Join(r.Namespaces, ", ")
	}
	return fmt.Sprintf("%s's bundle from %s (%s) for %s", r.TrustDomain.Name(), r.URL, r.Profile, ns)
}
