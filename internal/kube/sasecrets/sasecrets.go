// Package sasecrets keeps Citadel 1.0's per-service-account Secrets,
// istio.<sa>, for workloads that read their certificate from a Secret:
// issued for every ServiceAccount, refreshed, and inspected by warden
// check.
package sasecrets

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube"
)

// OptOutLabel on a namespace, set to "disabled", stops
// per-service-account Secrets there.
const OptOutLabel = "warden.io/sa-secrets"

// Prefix names Citadel 1.0's per-service-account Secrets: istio.<sa>.
const Prefix = "istio."

// Citadel-compatible type, annotation and keys of the istio.<sa> Secrets.
const (
	Type                     = corev1.SecretType("istio.io/key-and-cert")
	ServiceAccountAnnotation = "istio.io/service-account.name"
	keyWorkloadKey           = "key.pem"
	keyCertChain             = "cert-chain.pem"
	keyRootCert              = "root-cert.pem"
)

// Controller keeps a Citadel 1.0 Secret istio.<sa> (type
// istio.io/key-and-cert: cert-chain.pem, key.pem, root-cert.pem) for every
// ServiceAccount: created with the SA, refreshed when less than half its
// lifetime remains or the root changed, recreated if deleted while the SA
// exists, deleted with the SA.
type Controller struct {
	Client    kubernetes.Interface
	Authority *ca.Authority
	TTL       time.Duration // certificate lifetime; default the authority's
	Clock     ca.Clock
	Log       *slog.Logger
	Resync    time.Duration // default 10m
	Owner     string        // this install (its namespace); default warden-system
	// OwnerConflict hears of each backoff from a Secret another install
	// owns or another writer keeps changing (kube.Guard).
	OwnerConflict func(kind, reason string)

	guard  *kube.Guard
	tally  *kube.Tally
	loop   *kube.Loop
	saList corelisters.ServiceAccountLister
	nsList corelisters.NamespaceLister
	secLst corelisters.SecretLister
}

// Run reconciles until ctx is done. Call it on the leader only.
func (c *Controller) Run(ctx context.Context) error {
	c.Log, c.Resync, c.Owner = kube.WriterDefaults(c.Log, c.Resync, c.Owner)
	if c.Clock == nil {
		c.Clock = ca.SystemClock{}
	}
	c.guard = kube.NewGuard(c.Owner, "Secret", c.Log, c.Clock.Now)
	c.guard.Backoff = c.OwnerConflict
	c.loop = kube.NewLoop("sa-secrets", c.Log, c.reconcile)
	c.tally = &kube.Tally{Log: c.Log, Msg: "istio.<sa> Secrets written (each at DEBUG)", Now: c.Clock.Now}
	c.loop.Idle = c.tally.Flush
	f := informers.NewSharedInformerFactory(c.Client, c.Resync)
	secF := informers.NewSharedInformerFactoryWithOptions(c.Client, c.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "type=" + string(Type)
	}))
	saInf, nsInf, secInf := f.Core().V1().ServiceAccounts(), f.Core().V1().Namespaces(), secF.Core().V1().Secrets()
	c.saList, c.nsList, c.secLst = saInf.Lister(), nsInf.Lister(), secInf.Lister()
	onSA := func(obj any) {
		if sa, ok := kube.Tombstone(obj).(*corev1.ServiceAccount); ok {
			c.loop.Add(sa.Namespace + "/" + sa.Name)
		}
	}
	onSecret := func(obj any) {
		if s, ok := kube.Tombstone(obj).(*corev1.Secret); ok && strings.HasPrefix(s.Name, Prefix) {
			if sa := s.Annotations[ServiceAccountAnnotation]; sa != "" {
				c.loop.Add(s.Namespace + "/" + sa)
			}
		}
	}
	onNS := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			c.enqueueNamespace(ns.Name)
		}
	}
	for _, reg := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{saInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: onSA, UpdateFunc: func(_, n any) { onSA(n) }, DeleteFunc: onSA}},
		// Adds too: a Secret created by a reconcile that ran before its
		// namespace's opt-out label arrived must be seen, and removed,
		// even when the namespace's own event was handled first.
		{secInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: onSecret, UpdateFunc: func(_, n any) { onSecret(n) }, DeleteFunc: onSecret}},
		{nsInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, n any) { onNS(n) }}},
	} {
		if _, err := reg.inf.AddEventHandler(reg.h); err != nil {
			return err
		}
	}
	if err := kube.StartAndSync(ctx, "sa-secrets", f, secF); err != nil {
		return err
	}
	c.loop.Run(ctx, 2)
	return nil
}

// Controller is the cluster's istio.<sa> Secrets: they carry the bundle
// (root-cert.pem), so a rotation waits for them too.
var (
	_ bundle.Consumer = (*Controller)(nil)
	_ bundle.Runner   = (*Controller)(nil)
	_ bundle.Checker  = (*Controller)(nil)
)

// Name implements bundle.Consumer.
func (c *Controller) Name() string { return "sa-secrets" }

// Scope implements bundle.Consumer: the leader writes them.
func (c *Controller) Scope() bundle.Scope { return bundle.Cluster }

// Missing implements bundle.Consumer: the istio.<sa> Secrets of this
// install whose root-cert.pem lacks the root fp.
func (c *Controller) Missing(fp string) (total int, missing []string) {
	if c.secLst == nil {
		return 1, []string{"istio.<sa> Secrets (this replica does not write them)"}
	}
	list, err := c.secLst.List(labels.Everything())
	if err != nil {
		return 1, []string{"istio.<sa> Secrets: " + err.Error()}
	}
	for _, s := range list {
		if !strings.HasPrefix(s.Name, Prefix) || kube.OtherOwner(s.ObjectMeta, c.Owner) {
			continue
		}
		total++
		if !kube.HoldsRoot(s.Data[keyRootCert], fp) {
			missing = append(missing, "secret "+s.Namespace+"/"+s.Name)
		}
	}
	slices.Sort(missing)
	return total, missing
}

// Check implements bundle.Checker: every istio.<sa> Secret holds the root
// fp and a certificate not past half-life.
func (c *Controller) Check(ctx context.Context, fp string, now time.Time) []check.Result {
	owner := c.Owner
	if owner == "" {
		owner = kube.DefaultOwner
	}
	total, stale, late, err := inspect(ctx, c.Client, fp, owner, now)
	switch {
	case err != nil:
		return []check.Result{{Check: "sa-secrets", Status: check.Error, Message: err.Error()}}
	case len(stale) > 0:
		return []check.Result{check.Listed("sa-secrets", check.Error, stale, "Secret", "expired, or not under the signing root: %s")}
	case len(late) > 0:
		return []check.Result{check.Listed("sa-secrets", check.Warn, late, "Secret", "past half-life, not renewed yet: %s")}
	}
	return []check.Result{{Check: "sa-secrets", Status: check.OK, Message: fmt.Sprintf("%d istio.<sa> Secrets current", total)}}
}

// Changed re-checks every ServiceAccount, after the root changed.
func (c *Controller) Changed([]*x509.Certificate) {
	if c.loop == nil || c.saList == nil {
		return
	}
	sas, _ := c.saList.List(labels.Everything())
	for _, sa := range sas {
		c.loop.Add(sa.Namespace + "/" + sa.Name)
	}
}

func (c *Controller) enqueueNamespace(ns string) {
	sas, _ := c.saList.ServiceAccounts(ns).List(labels.Everything())
	for _, sa := range sas {
		c.loop.Add(ns + "/" + sa.Name)
	}
}

func (c *Controller) reconcile(ctx context.Context, key string) (time.Duration, error) {
	ns, name, _ := strings.Cut(key, "/")
	secName := Prefix + name
	secrets := c.Client.CoreV1().Secrets(ns)
	existing, err := c.secLst.Secrets(ns).Get(secName)
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	if apierrors.IsNotFound(err) {
		existing = nil
	}
	if existing != nil && existing.Annotations[ServiceAccountAnnotation] != name {
		return 0, nil // not ours: leave it alone
	}
	if existing != nil {
		if ok, retry := c.guard.MayWrite(ns+"/"+secName, existing); !ok {
			return retry, nil
		}
	}
	sa, err := c.saList.ServiceAccounts(ns).Get(name)
	if apierrors.IsNotFound(err) {
		if existing == nil {
			return 0, nil
		}
		err := secrets.Delete(ctx, secName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &existing.UID}})
		if err == nil {
			c.tally.Add("deleted", "deleted service account secret", "namespace", ns, "secret", secName)
		}
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return 0, nil
		}
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	if n, err := c.nsList.Get(ns); err == nil && n.Labels[OptOutLabel] == "disabled" {
		// Opted out: none of ours stays, including one written before the
		// label reached this replica (a service account made right after
		// the namespace was labelled).
		if existing == nil {
			return 0, nil
		}
		err := secrets.Delete(ctx, secName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &existing.UID}})
		if err == nil {
			c.tally.Add("deleted", "deleted service account secret: the namespace opted out", "namespace", ns, "secret", secName)
		}
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return 0, nil
		}
		return 0, err
	}
	now := c.Clock.Now()
	root := c.bundlePEM()
	if existing != nil {
		if refreshAt, ok := c.fresh(existing, root, now); ok {
			if !c.guard.Owned(existing) {
				// Written before owners were marked: adopt it as it is.
				upd := existing.DeepCopy()
				c.guard.Annotate(&upd.ObjectMeta)
				if _, err := secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager}); err != nil {
					return 0, err
				}
			}
			return refreshAt.Sub(now), nil
		}
	}
	data, leaf, err := c.issue(ns, name, root)
	if err != nil {
		return 0, err
	}
	if existing == nil {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name: secName, Namespace: ns,
				Annotations: map[string]string{ServiceAccountAnnotation: name, kube.OwnerAnnotation: c.Owner},
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "ServiceAccount", Name: sa.Name, UID: sa.UID,
				}},
			},
			Type: Type,
			Data: data,
		}, metav1.CreateOptions{FieldManager: kube.FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return 0, fmt.Errorf("secret %s/%s appeared meanwhile", ns, secName) // retry against the cache
		}
		if err == nil {
			c.tally.Add("created", "created service account secret", "namespace", ns, "secret", secName)
		}
	} else {
		upd := existing.DeepCopy()
		upd.Data = data
		c.guard.Annotate(&upd.ObjectMeta)
		_, err = secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager})
		if err == nil {
			c.tally.Add("refreshed", "refreshed service account secret", "namespace", ns, "secret", secName)
		}
	}
	if err != nil {
		return 0, err
	}
	return halfLife(leaf).Sub(now), nil
}

// fresh says whether the secret can stay as is, and until when.
func (c *Controller) fresh(s *corev1.Secret, root []byte, now time.Time) (time.Time, bool) {
	if !bytes.Equal(s.Data[keyRootCert], root) || len(s.Data[keyWorkloadKey]) == 0 {
		return time.Time{}, false
	}
	certs, err := ca.ParseCerts(s.Data[keyCertChain])
	if err != nil {
		return time.Time{}, false
	}
	at := halfLife(certs[0])
	return at, now.Before(at) && now.Before(certs[0].NotAfter)
}

// halfLife is when a certificate is due for renewal.
func halfLife(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

func (c *Controller) bundlePEM() []byte {
	b := c.Authority.Bundle()
	if b == nil {
		return nil
	}
	return ca.EncodeCerts(b.X509Authorities()...)
}

func (c *Controller) issue(ns, sa string, root []byte) (map[string][]byte, *x509.Certificate, error) {
	id, err := spiffeid.FromSegments(c.Authority.TrustDomain(), "ns", ns, "sa", sa)
	if err != nil {
		return nil, nil, err
	}
	key, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		return nil, nil, err
	}
	csr, err := ca.NewCSR(key, id)
	if err != nil {
		return nil, nil, err
	}
	iss, err := c.Authority.Sign(ca.SignRequest{CSR: csr, ID: id, TTL: c.TTL})
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return nil, nil, err
	}
	chain := bytes.Join(iss.Chain[:len(iss.Chain)-1], nil)
	return map[string][]byte{keyCertChain: chain, keyWorkloadKey: keyPEM, keyRootCert: root},
		iss.Cert, nil
}
