package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/ca"
)

// PluggedInCA watches the Secret cacerts (Istio's plugged-in CA layout, or
// tls.crt/tls.key/ca.crt) and activates its material in the authority on
// every change, without a restart. Every replica runs it, since every
// replica signs. Invalid material is reported and the current CA kept.
type PluggedInCA struct {
	Client    kubernetes.Interface
	Namespace string
	Authority *ca.Authority
	Clock     ca.Clock
	Log       *slog.Logger
}

// LoadPluggedIn reads and validates the cacerts Secret; found is false when
// there is none.
func LoadPluggedIn(ctx context.Context, cs kubernetes.Interface, namespace string, now time.Time) (m *ca.Material, found bool, err error) {
	sec, err := cs.CoreV1().Secrets(namespace).Get(ctx, PluggedSecretName, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("kube: secret %s/%s: %w", namespace, PluggedSecretName, err)
	}
	m, err = decodePluggedIn(sec, now)
	return m, true, err
}

func decodePluggedIn(sec *corev1.Secret, now time.Time) (*ca.Material, error) {
	f, err := filesFromSecret(sec)
	if err != nil {
		return nil, err
	}
	m, err := ca.DecodeMaterial(f, now)
	if err != nil {
		return nil, fmt.Errorf("kube: secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	return m, nil
}

// Run watches until ctx is done.
func (p *PluggedInCA) Run(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	if p.Clock == nil {
		p.Clock = ca.SystemClock{}
	}
	f := informers.NewSharedInformerFactoryWithOptions(p.Client, 10*time.Minute,
		informers.WithNamespace(p.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + PluggedSecretName }))
	inf := f.Core().V1().Secrets().Informer()
	apply := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		m, err := decodePluggedIn(sec, p.Clock.Now())
		if err != nil {
			p.Log.Error("ignoring invalid plugged-in CA; keeping the current one", "error", err.Error())
			return
		}
		if cur := p.Authority.Material(); cur != nil && cur.Cert.Equal(m.Cert) && ca.SameRoots(cur.Roots, m.Roots) {
			return
		}
		if err := p.Authority.Activate(m); err != nil {
			p.Log.Error("could not activate plugged-in CA", "error", err.Error())
			return
		}
		// Consumers hear of a new root from the authority's Bundles.
		p.Log.Info("activated plugged-in CA", "subject", m.Cert.Subject.String(), "notAfter", m.Cert.NotAfter)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, n any) { apply(n) },
		DeleteFunc: func(any) {
			p.Log.Warn("plugged-in CA secret deleted; keeping the current CA until restart")
		},
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}
