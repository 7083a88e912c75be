package casecret

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

// PluggedIn watches the Secret cacerts (Istio's plugged-in CA layout, or
// tls.crt/tls.key/ca.crt) and activates its material in the authority on
// every change, without a restart. Every replica runs it, since every
// replica signs. Invalid material is reported and the current CA kept.
//
// Deleting cacerts changes nothing in a running replica (it keeps the CA
// it holds), and a replica started afterwards refuses to start (see
// SourceConfigMap), so that replicas never sign under two roots.
// Deleting the SourceConfigMap as well switches every replica to the
// self-signed CA in istio-ca-secret (SelfSigned).
type PluggedIn struct {
	Client    kubernetes.Interface
	Namespace string
	Authority *ca.Authority
	Clock     ca.Clock
	Log       *slog.Logger
	// SelfSigned loads (or, first, creates) istio-ca-secret's CA.
	SelfSigned func(context.Context) (*ca.Material, error)
	// Plugged: the replica started with cacerts' CA (and recorded it). A
	// deletion between that read and the watches' first lists leaves no
	// event, so once they have synced, a missing record is handled as its
	// deletion and a missing cacerts is reported.
	Plugged bool
	// Invalid hears of each change to cacerts ignored for invalid
	// material (the current CA kept).
	Invalid func()
}

// LoadPluggedIn reads and validates the cacerts Secret; found is false when
// there is none.
func LoadPluggedIn(ctx context.Context, cs kubernetes.Interface, namespace string, now time.Time) (m *ca.Material, found bool, err error) {
	sec, err := cs.CoreV1().Secrets(namespace).Get(ctx, PluggedName, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("kube: secret %s/%s: %w", namespace, PluggedName, err)
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
func (p *PluggedIn) Run(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	if p.Clock == nil {
		p.Clock = ca.SystemClock{}
	}
	f := informers.NewSharedInformerFactoryWithOptions(p.Client, 10*time.Minute,
		informers.WithNamespace(p.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + PluggedName }))
	inf := f.Core().V1().Secrets().Informer()
	srcF := informers.NewSharedInformerFactoryWithOptions(p.Client, 10*time.Minute,
		informers.WithNamespace(p.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + SourceConfigMap }))
	srcInf := srcF.Core().V1().ConfigMaps().Informer()
	apply := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		m, err := decodePluggedIn(sec, p.Clock.Now())
		if err != nil {
			p.Log.Error("ignoring invalid plugged-in CA; keeping the current one", "error", err.Error())
			if p.Invalid != nil {
				p.Invalid()
			}
			return
		}
		if err := RecordPluggedIn(ctx, p.Client, p.Namespace, m); err != nil {
			p.Log.Error("not activating the plugged-in CA: replicas started later could not know of it", "error", err.Error())
			return
		}
		changed, err := p.Authority.Replace(m)
		if err != nil {
			p.Log.Error("could not activate plugged-in CA", "error", err.Error())
			return
		}
		if !changed {
			return
		}
		// Consumers hear of a new root from the authority's Bundles.
		p.Log.Info("activated plugged-in CA", "subject", m.Cert.Subject.String(), "notAfter", m.Cert.NotAfter)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, n any) { apply(n) },
		DeleteFunc: func(any) { p.deleted() },
	}); err != nil {
		return err
	}
	if _, err := srcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(any) { p.sourceDeleted(ctx) },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	srcF.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	srcF.WaitForCacheSync(ctx.Done())
	// Deletions made before the watches' first lists leave no events.
	if p.Plugged && ctx.Err() == nil {
		switch {
		case len(srcInf.GetStore().List()) == 0:
			p.sourceDeleted(ctx) // the record (and perhaps cacerts) gone
		case len(inf.GetStore().List()) == 0:
			p.deleted()
		}
	}
	<-ctx.Done()
	f.Shutdown()
	srcF.Shutdown()
	return nil
}

// deleted reports that cacerts is gone (the replica keeps its CA).
func (p *PluggedIn) deleted() {
	p.Log.Error(fmt.Sprintf("secret %s/%s deleted: this replica keeps signing with the plugged-in CA it holds, and replicas started now refuse to start. "+
		"Restore the secret; or, to switch every replica to the self-signed root in secret %s/%s, delete configmap %s/%s",
		p.Namespace, PluggedName, p.Namespace, Name, p.Namespace, SourceConfigMap))
}

// sourceDeleted: the record of the plugged-in CA is gone. With cacerts
// still there, it is written again; without, the operator has confirmed
// the switch to istio-ca-secret, which this replica makes.
func (p *PluggedIn) sourceDeleted(ctx context.Context) {
	m, found, err := LoadPluggedIn(ctx, p.Client, p.Namespace, p.Clock.Now())
	switch {
	case err != nil && found:
		p.Log.Error("the plugged-in CA record was deleted and secret cacerts is invalid; keeping the current CA", "error", err.Error())
		return
	case err != nil:
		p.Log.Error("the plugged-in CA record was deleted; could not read secret cacerts; keeping the current CA", "error", err.Error())
		return
	case found:
		if err := RecordPluggedIn(ctx, p.Client, p.Namespace, m); err != nil {
			p.Log.Error("could not restore the plugged-in CA record", "error", err.Error())
		}
		return
	}
	if p.SelfSigned == nil {
		return
	}
	m, err = p.SelfSigned(ctx)
	if err != nil {
		p.Log.Error("could not switch to the self-signed CA; keeping the current one", "error", err.Error())
		return
	}
	if err := p.Authority.Activate(m); err != nil {
		p.Log.Error("could not activate the self-signed CA; keeping the current one", "error", err.Error())
		return
	}
	p.Log.Warn(fmt.Sprintf("secret %s/%s and configmap %s/%s deleted: switched to the self-signed CA in secret %s/%s", p.Namespace, PluggedName, p.Namespace, SourceConfigMap, p.Namespace, Name),
		"subject", m.Cert.Subject.String())
}
