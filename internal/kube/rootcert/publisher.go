// Package rootcert publishes the trust bundle to every namespace as
// Istio does: ConfigMap istio-ca-root-cert, key root-cert.pem, written by
// the leader, repaired when edited or deleted, and inspected by warden
// check.
package rootcert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
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
	"github.com/wardenmesh/warden/internal/kube"
)

// Trust bundle ConfigMap, as Istio names it.
const (
	ConfigMap = "istio-ca-root-cert"
	Key       = "root-cert.pem"
)

// Publisher keeps ConfigMap istio-ca-root-cert (key root-cert.pem)
// in every namespace equal to the current trust bundle: it creates it in
// new namespaces and repairs it when edited or deleted. It writes only
// ConfigMaps that carry its Owner (or no owner, which it adopts), and
// backs off from one that someone else keeps rewriting.
type Publisher struct {
	Client kubernetes.Interface
	Bundle func() []byte // PEM roots
	Owner  string        // this install (its namespace); default warden-system
	Log    *slog.Logger
	Resync time.Duration // default 10m
	Now    func() time.Time
	// OwnerConflict hears of each backoff from a ConfigMap another
	// install owns or another writer keeps changing (kube.Guard).
	OwnerConflict func(kind, reason string)
	// Lag hears, for each ConfigMap written with a new bundle, the time
	// since the bundle changed.
	Lag func(time.Duration)

	guard     *kube.Guard
	tally     *kube.Tally
	mu        sync.Mutex
	changedAt time.Time       // when the bundle last changed (Changed)
	pending   map[string]bool // namespaces not yet written since then
	sent      [][32]byte      // digests of the last bundles published: rewriting one of them is an update, not a repair
	loop      *kube.Loop
	nsList    corelisters.NamespaceLister
	cmList    corelisters.ConfigMapLister
}

// Run publishes until ctx is done. Call it on the leader only.
func (p *Publisher) Run(ctx context.Context) error {
	p.Log, p.Resync, p.Owner = kube.WriterDefaults(p.Log, p.Resync, p.Owner)
	if p.Now == nil {
		p.Now = time.Now
	}
	p.guard = kube.NewGuard(p.Owner, "ConfigMap", p.Log, p.Now)
	p.guard.Backoff = p.OwnerConflict
	p.loop = kube.NewLoop("bundle", p.Log, p.reconcile)
	p.tally = &kube.Tally{Log: p.Log, Msg: "trust bundle ConfigMaps written (each at DEBUG)", Now: p.Now}
	p.loop.Idle = p.tally.Flush
	nsF := informers.NewSharedInformerFactory(p.Client, p.Resync)
	cmF := informers.NewSharedInformerFactoryWithOptions(p.Client, p.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + ConfigMap
	}))
	nsInf, cmInf := nsF.Core().V1().Namespaces(), cmF.Core().V1().ConfigMaps()
	p.nsList, p.cmList = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.loop.Add(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if cm, ok := kube.Tombstone(obj).(*corev1.ConfigMap); ok {
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
	if err := kube.StartAndSync(ctx, "bundle", nsF, cmF); err != nil {
		return err
	}
	p.loop.Run(ctx, 2)
	return nil
}

// lag reports, once ns's ConfigMap got the bundle, how long since the
// bundle changed, for the namespaces that had their ConfigMap then (not a
// namespace created since, nor the leader's first pass).
func (p *Publisher) lag(ns string) {
	p.mu.Lock()
	at, pending := p.changedAt, p.pending[ns]
	delete(p.pending, ns)
	p.mu.Unlock()
	if p.Lag != nil && pending {
		p.Lag(p.Now().Sub(at))
	}
}

// published records want as published, and says whether old was
// published before it (so that replacing it is an update).
func (p *Publisher) published(old, want []byte) bool {
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

// Publisher is the cluster's istio-ca-root-cert ConfigMaps.
var (
	_ bundle.Consumer = (*Publisher)(nil)
	_ bundle.Runner   = (*Publisher)(nil)
	_ bundle.Checker  = (*Publisher)(nil)
)

// Name implements bundle.Consumer.
func (p *Publisher) Name() string { return "configmaps" }

// Scope implements bundle.Consumer: the leader writes them.
func (p *Publisher) Scope() bundle.Scope { return bundle.Cluster }

// Changed republishes every namespace, after the bundle changed.
func (p *Publisher) Changed([]*x509.Certificate) {
	if p.loop == nil || p.nsList == nil {
		return
	}
	nss, _ := p.nsList.List(labels.Everything())
	p.mu.Lock()
	p.changedAt = p.Now()
	p.pending = map[string]bool{}
	for _, ns := range nss {
		p.pending[ns.Name] = true
	}
	p.mu.Unlock()
	for _, ns := range nss {
		p.loop.Add(ns.Name)
	}
}

func (p *Publisher) reconcile(ctx context.Context, ns string) (time.Duration, error) {
	n, err := p.nsList.Get(ns)
	if apierrors.IsNotFound(err) || (err == nil && n.Status.Phase == corev1.NamespaceTerminating) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	want := p.Bundle()
	cms := p.Client.CoreV1().ConfigMaps(ns)
	key := ns + "/" + ConfigMap
	cm, err := p.cmList.ConfigMaps(ns).Get(ConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		created := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMap, Namespace: ns, Labels: map[string]string{"istio.io/config": "true", "app.kubernetes.io/managed-by": "warden"}},
			Data:       map[string]string{Key: string(want)},
		}
		p.guard.Annotate(&created.ObjectMeta)
		_, err = cms.Create(ctx, created, metav1.CreateOptions{FieldManager: kube.FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return 0, nil // the informer will bring it and we will compare
		}
		if err == nil {
			p.tally.Add("published", "published trust bundle", "namespace", ns)
			p.lag(ns)
		}
		return 0, err
	case err != nil:
		return 0, err
	}
	p.published(nil, want)
	same := bytes.Equal([]byte(cm.Data[Key]), want) && len(cm.Data) == 1 && len(cm.BinaryData) == 0
	if same && p.guard.Owned(cm) {
		return 0, nil
	}
	if ok, retry := p.guard.MayWrite(key, cm); !ok {
		return retry, nil
	}
	fixed := cm.DeepCopy()
	fixed.Data = map[string]string{Key: string(want)}
	fixed.BinaryData = nil
	p.guard.Annotate(&fixed.ObjectMeta)
	if _, err := cms.Update(ctx, fixed, metav1.UpdateOptions{FieldManager: kube.FieldManager}); err != nil {
		return 0, err
	}
	if same {
		p.tally.Add("adopted", "adopted trust bundle ConfigMap", "namespace", ns, "owner", p.Owner)
		return 0, nil
	}
	p.lag(ns)
	if p.published([]byte(cm.Data[Key]), want) {
		p.tally.Add("updated", "updated trust bundle", "namespace", ns)
		return 0, nil
	}
	p.guard.Wrote(key)
	p.tally.Add("rewritten", "rewrote trust bundle: the ConfigMap held roots warden does not serve (edited by another writer, or written before a root change)", "namespace", ns)
	return 0, nil
}

// Missing reports, for a root rotation, how many namespaces' trust
// bundle ConfigMaps this install keeps and which lack the root with
// fingerprint fp (ca.Fingerprint). Only the leader, which runs the
// publisher, can tell.
func (p *Publisher) Missing(fp string) (total int, missing []string) {
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
		cm, err := p.cmList.ConfigMaps(ns.Name).Get(ConfigMap)
		if err == nil {
			if o := cm.Annotations[kube.OwnerAnnotation]; o != "" && o != p.Owner {
				continue // another install's (reported by the publisher), not this one's to wait for
			}
		}
		total++
		if err == nil && kube.HoldsRoot([]byte(cm.Data[Key]), fp) {
			continue
		}
		missing = append(missing, "configmap "+ns.Name+"/"+ConfigMap)
	}
	slices.Sort(missing)
	return total, missing
}

// Check implements bundle.Checker: the ConfigMap of every namespace
// holds the root fp (the one workload certificates chain to).
func (p *Publisher) Check(ctx context.Context, fp string, _ time.Time) []check.Result {
	owner := p.Owner
	if owner == "" {
		owner = kube.DefaultOwner
	}
	total, missing, stale, others, err := inspect(ctx, p.Client, fp, owner)
	if err != nil {
		return []check.Result{{Check: "bundle", Status: check.Error, Message: err.Error()}}
	}
	var out []check.Result
	if len(missing)+len(stale) == 0 {
		out = append(out, check.Result{Check: "bundle", Status: check.OK, Message: fmt.Sprintf("%s current in %d of %d namespaces", ConfigMap, total-len(others), total)})
	}
	if len(missing) > 0 {
		out = append(out, check.Listed("bundle", check.Error, missing, "namespace", ConfigMap+" is missing in %s (is warden's leader running?)"))
	}
	if len(stale) > 0 {
		out = append(out, check.Listed("bundle", check.Error, stale, "namespace", ConfigMap+" lacks the signing root in %s: workloads there refuse new certificates"))
	}
	if len(others) > 0 {
		out = append(out, check.Listed("bundle", check.Warn, others, "namespace", ConfigMap+" belongs to another warden install (warden.io/owner) in %s"))
	}
	return out
}

// inspect lists the namespaces (of total) whose istio-ca-root-cert
// ConfigMap is missing, does not hold the root with fingerprint fp (the
// one workload certificates chain to), or belongs to another install
// (its warden.io/owner is not owner; that install keeps it).
func inspect(ctx context.Context, cs kubernetes.Interface, fp, owner string) (total int, missing, stale, others []string, err error) {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, nil, nil, nil, err
	}
	for _, n := range nss.Items {
		if n.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		total++
		cm, err := cs.CoreV1().ConfigMaps(n.Name).Get(ctx, ConfigMap, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, n.Name)
		case err != nil:
			return 0, nil, nil, nil, err
		case kube.OtherOwner(cm.ObjectMeta, owner):
			others = append(others, n.Name+" ("+cm.Annotations[kube.OwnerAnnotation]+")")
		case !kube.HoldsRoot([]byte(cm.Data[Key]), fp):
			stale = append(stale, n.Name)
		}
	}
	slices.Sort(missing)
	slices.Sort(stale)
	slices.Sort(others)
	return total, missing, stale, others, nil
}
