package kube

import (
	"bytes"
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Trust bundle ConfigMap, as Istio names it.
const (
	BundleConfigMap = "istio-ca-root-cert"
	BundleKey       = "root-cert.pem"
)

// BundlePublisher keeps ConfigMap istio-ca-root-cert (key root-cert.pem)
// in every namespace equal to the current trust bundle: it creates it in
// new namespaces and repairs it when edited or deleted.
type BundlePublisher struct {
	Client kubernetes.Interface
	Bundle func() []byte // PEM roots
	Log    *slog.Logger
	Resync time.Duration // default 10m

	loop   *loop
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
	p.loop = newLoop("bundle", p.Log, p.reconcile)
	nsF := informers.NewSharedInformerFactory(p.Client, p.Resync)
	cmF := informers.NewSharedInformerFactoryWithOptions(p.Client, p.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + BundleConfigMap
	}))
	nsInf, cmInf := nsF.Core().V1().Namespaces(), cmF.Core().V1().ConfigMaps()
	p.nsList, p.cmList = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.loop.add(ns.Name)
		}
	}
	enqueueCM := func(obj any) {
		if cm, ok := tombstone(obj).(*corev1.ConfigMap); ok {
			p.loop.add(cm.Namespace)
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
	if err := startAndSync(ctx, "bundle", nsF, cmF); err != nil {
		return err
	}
	p.loop.run(ctx, 2)
	return nil
}

// Changed republishes every namespace, after the bundle changed.
func (p *BundlePublisher) Changed() {
	if p.loop == nil || p.nsList == nil {
		return
	}
	nss, _ := p.nsList.List(labels.Everything())
	for _, ns := range nss {
		p.loop.add(ns.Name)
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
	cm, err := p.cmList.ConfigMaps(ns).Get(BundleConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: BundleConfigMap, Namespace: ns, Labels: map[string]string{"istio.io/config": "true", "app.kubernetes.io/managed-by": "warden"}},
			Data:       map[string]string{BundleKey: string(want)},
		}, metav1.CreateOptions{})
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
	if bytes.Equal([]byte(cm.Data[BundleKey]), want) && len(cm.Data) == 1 && len(cm.BinaryData) == 0 {
		return 0, nil
	}
	fixed := cm.DeepCopy()
	fixed.Data = map[string]string{BundleKey: string(want)}
	fixed.BinaryData = nil
	if _, err := cms.Update(ctx, fixed, metav1.UpdateOptions{}); err != nil {
		return 0, err
	}
	p.Log.Info("repaired trust bundle", "namespace", ns)
	return 0, nil
}
