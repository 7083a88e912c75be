package kube

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
)

// Trust bundle ConfigMap, as Istio names it.
const (
	BundleConfigMap = "istio-ca-root-cert"
	BundleKey       = "root-cert.pem"
)

// BundlePublisher keeps ConfigMap istio-ca-root-cert (key root-cert.pem)
// in every namespace equal to the current trust bundle: it creates it in
// new namespaces and repairs it when edited or deleted. It writes only
// ConfigMaps that carry its Owner (or no owner, which it adopts), and
// backs off from one that someone else keeps rewriting.
type BundlePublisher struct {
	Client kubernetes.Interface
	Bundle func() []byte // PEM roots
	Owner  string        // this install (its namespace); default warden-system
	Log    *slog.Logger
	Resync time.Duration // default 10m
	Now    func() time.Time

	guard  *Guard
	mu     sync.Mutex
	sent   [][32]byte // digests of the last bundles published: rewriting one of them is an update, not a repair
	loop   *Loop
	nsList corelisters.NamespaceLister
	cmList corelisters.ConfigMapLister
}

// Run publishes until ctx is done. Call it on the leader only.
func (p *BundlePublisher) Run(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	if p.Resync == 0 {
		p.Resync = 10 * time.Minute
	}
	if p.Owner == "" {
		p.Owner = DefaultOwner
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	p.guard = NewGuard(p.Owner, "ConfigMap", p.Log, p.Now)
	p.loop = NewLoop("bundle", p.Log, p.reconcile)
	nsF := informers.NewSharedInformerFactory(p.Client, p.Resync)
	cmF := informers.NewSharedInformerFactoryWithOptions(p.Client, p.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + BundleConfigMap
	}))
	nsInf, cmInf := nsF.Core().V1().Namespaces(), cmF.Core().V1().ConfigMaps()
	p.nsList, p.cmList = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.loop.Add(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if cm, ok := Tombstone(obj).(*corev1.ConfigMap); ok {
			p.loop.Add(cm.Namespace)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, UpdateFunc: func(_, n any) { enqueueNS(n) },
	}); err != nil {
		return err
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		// Add too: a Create that lost to AlreadyExists (the lister lagged)
		// is compared when the informer brings the object.
		AddFunc: enqueueCM, UpdateFunc: func(_, n any) { enqueueCM(n) }, DeleteFunc: enqueueCM,
	}); err != nil {
		return err
	}
	if err := StartAndSync(ctx, "bundle", nsF, cmF); err != nil {
		return err
	}
	p.loop.Run(ctx, 2)
	return nil
}

// published records want as published, and says whether old was
// published before it (so that replacing it is an update).
func (p *BundlePublisher) published(old, want []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := sha256.Sum256(want)
	if !slices.Contains(p.sent, w) {
		p.sent = append(p.sent, w)
		if len(p.sent) > 4 {
			p.sent = p.sent[1:]
		}
	}
	return old != nil && slices.Contains(p.sent, sha256.Sum256(old))
}

// BundlePublisher is the cluster's istio-ca-root-cert ConfigMaps.
var (
	_ bundle.Consumer = (*BundlePublisher)(nil)
	_ bundle.Runner   = (*BundlePublisher)(nil)
	_ bundle.Checker  = (*BundlePublisher)(nil)
)

// Name implements bundle.Consumer.
func (p *BundlePublisher) Name() string { return "configmaps" }

// Scope implements bundle.Consumer: the leader writes them.
func (p *BundlePublisher) Scope() bundle.Scope { return bundle.Cluster }

// Changed republishes every namespace, after the bundle changed.
func (p *BundlePublisher) Changed([]*x509.Certificate) {
	if p.loop == nil || p.nsList == nil {
		return
	}
	nss, _ := p.nsList.List(labels.Everything())
	for _, ns := range nss {
		p.loop.Add(ns.Name)
	}
}

func (p *BundlePublisher) reconcile(ctx context.Context, ns string) (time.Duration, error) {
	n, err := p.nsList.Get(ns)
	if apierrors.IsNotFound(err) || (err == nil && n.Status.Phase == corev1.NamespaceTerminating) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	want := p.Bundle()
	cms := p.Client.CoreV1().ConfigMaps(ns)
	key := ns + "/" + BundleConfigMap
	cm, err := p.cmList.ConfigMaps(ns).Get(BundleConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		created := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: BundleConfigMap, Namespace: ns, Labels: map[string]string{"istio.io/config": "true", "app.kubernetes.io/managed-by": "warden"}},
			Data:       map[string]string{BundleKey: string(want)},
		}
		p.guard.Annotate(&created.ObjectMeta)
		_, err = cms.Create(ctx, created, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return 0, nil // the informer will bring it and we will compare
		}
		if err == nil {
			p.Log.Info("published trust bundle", "namespace", ns)
		}
		return 0, err
	case err != nil:
		return 0, err
	}
	p.published(nil, want)
	same := bytes.Equal([]byte(cm.Data[BundleKey]), want) && len(cm.Data) == 1 && len(cm.BinaryData) == 0
	if same && p.guard.Owned(cm) {
		return 0, nil
	}
	if ok, retry := p.guard.MayWrite(key, cm); !ok {
		return retry, nil
	}
	fixed := cm.DeepCopy()
	fixed.Data = map[string]string{BundleKey: string(want)}
	fixed.BinaryData = nil
	p.guard.Annotate(&fixed.ObjectMeta)
	if _, err := cms.Update(ctx, fixed, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return 0, err
	}
	if same {
		p.Log.Info("adopted trust bundle ConfigMap", "namespace", ns, "owner", p.Owner)
		return 0, nil
	}
	if p.published([]byte(cm.Data[BundleKey]), want) {
		p.Log.Info("updated trust bundle", "namespace", ns)
		return 0, nil
	}
	p.guard.Wrote(key)
	p.Log.Info("rewrote trust bundle: the ConfigMap held roots warden does not serve (edited by another writer, or written before a root change)", "namespace", ns)
	return 0, nil
}

// Missing reports, for a root rotation, how many namespaces' trust
// bundle ConfigMaps this install keeps and which lack the root with
// fingerprint fp (ca.Fingerprint). Only the leader, which runs the
// publisher, can tell.
func (p *BundlePublisher) Missing(fp string) (total int, missing []string) {
	if p.nsList == nil || p.cmList == nil {
		return 1, []string{"istio-ca-root-cert ConfigMaps (this replica does not publish them)"}
	}
	nss, err := p.nsList.List(labels.Everything())
	if err != nil {
		return 1, []string{"istio-ca-root-cert ConfigMaps: " + err.Error()}
	}
	for _, ns := range nss {
		if ns.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		cm, err := p.cmList.ConfigMaps(ns.Name).Get(BundleConfigMap)
		if err == nil {
			if o := cm.Annotations[OwnerAnnotation]; o != "" && o != p.Owner {
				continue // another install's (reported by the publisher), not this one's to wait for
			}
		}
		total++
		if err == nil && HoldsRoot([]byte(cm.Data[BundleKey]), fp) {
			continue
		}
		missing = append(missing, "configmap "+ns.Name+"/"+BundleConfigMap)
	}
	slices.Sort(missing)
	return total, missing
}

// Check implements bundle.Checker: the ConfigMap of every namespace
// holds the root fp (the one workload certificates chain to).
func (p *BundlePublisher) Check(ctx context.Context, fp string, _ time.Time) []check.Result {
	owner := p.Owner
	if owner == "" {
		owner = DefaultOwner
	}
	total, missing, stale, others, err := CheckBundles(ctx, p.Client, fp, owner)
	if err != nil {
		return []check.Result{{Check: "bundle", Status: check.Error, Message: err.Error()}}
	}
	var out []check.Result
	if len(missing)+len(stale) == 0 {
		out = append(out, check.Result{Check: "bundle", Status: check.OK, Message: fmt.Sprintf("%s current in %d of %d namespaces", BundleConfigMap, total-len(others), total)})
	}
	if len(missing) > 0 {
		out = append(out, check.Result{Check: "bundle", Status: check.Error, Message: fmt.Sprintf("%s is missing in %s (is warden's leader running?)", BundleConfigMap, strings.Join(missing, ", "))})
	}
	if len(stale) > 0 {
		out = append(out, check.Result{Check: "bundle", Status: check.Error, Message: fmt.Sprintf("%s lacks the signing root in %s: workloads there refuse new certificates", BundleConfigMap, strings.Join(stale, ", "))})
	}
	if len(others) > 0 {
		out = append(out, check.Result{Check: "bundle", Status: check.Warn, Message: fmt.Sprintf("%s belongs to another warden install (warden.io/owner) in %s", BundleConfigMap, strings.Join(others, ", "))})
	}
	return out
}
