package kube

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// GatewayCredentials follows the Secrets a Gateway's credentialName
// names, as istiod does: every Secret except service-account tokens and
// Helm releases is watched (a Secret's data stays in the informer's
// memory only), and a change calls OnChange with its namespace, so that
// the gateways there are pushed the new certificate.
type GatewayCredentials struct {
	Client   kubernetes.Interface
	Log      *slog.Logger
	OnChange func(namespace string)
	lister   atomic.Pointer[corelisters.SecretLister]
}

// Run watches until ctx is done.
func (g *GatewayCredentials) Run(ctx context.Context) error {
	if g.Log == nil {
		g.Log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactoryWithOptions(g.Client, 10*time.Minute, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "type!=" + string(corev1.SecretTypeServiceAccountToken) + ",type!=helm.sh/release.v1"
	}))
	inf := f.Core().V1().Secrets()
	changed := func(obj any) {
		if s, ok := tombstone(obj).(*corev1.Secret); ok && g.OnChange != nil && g.lister.Load() != nil {
			g.OnChange(s.Namespace)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed, UpdateFunc: func(_, n any) { changed(n) }, DeleteFunc: changed,
	}); err != nil {
		return err
	}
	lister := inf.Lister()
	if err := startAndSync(ctx, "gateway-credentials", f); err != nil {
		f.Shutdown()
		if ctx.Err() != nil {
			return nil // stopped before the first list finished: not a failure
		}
		return err
	}
	g.lister.Store(&lister)
	if g.OnChange != nil {
		g.OnChange("") // gateways that connected before the list
	}
	<-ctx.Done()
	return nil
}

// Lookup returns the data of Secret ns/name; false until the first list
// is done, or when there is no such Secret.
func (g *GatewayCredentials) Lookup(ns, name string) (map[string][]byte, bool) {
	l := g.lister.Load()
	if l == nil {
		return nil, false
	}
	s, err := (*l).Secrets(ns).Get(name)
	if err != nil {
		return nil, false
	}
	return s.Data, true
}
