// Package trustbundle publishes the trust bundle as a Kubernetes
// ClusterTrustBundle (certificates.k8s.io/v1) linked to warden's
// pod-certificate signer, so that a pod mounts the mesh's roots with a
// clusterTrustBundle projected volume: one more copy of the bundle,
// written by the leader, waited for by a root rotation and inspected by
// warden check, like the istio-ca-root-cert ConfigMaps.
package trustbundle

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

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	certlisters "k8s.io/client-go/listers/certificates/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube"
)

// TrustDomainLabel carries the trust domain whose roots a
// ClusterTrustBundle holds; a clusterTrustBundle volume selects on it.
const TrustDomainLabel = "warden.io/trust-domain"

// Name is the ClusterTrustBundle of signer's roots for trust domain td.
// The API server requires the name of a bundle linked to a signer to
// start with the signer name, '/' replaced by ':', then ':'
// (k8s.io/kubernetes pkg/apis/core/validation ValidateClusterTrustBundleName).
func Name(signer, td string) string {
	return strings.ReplaceAll(signer, "/", ":") + ":" + td
}

// Validate says whether signer and td make a ClusterTrustBundle the API
// server accepts: the part after the signer prefix a DNS subdomain, and
// td a label value.
func Validate(signer, td string) error {
	if errs := validation.IsDNS1123Subdomain(td); len(errs) > 0 {
		return fmt.Errorf("trustbundle: trust domain %q cannot name a ClusterTrustBundle: %s", td, strings.Join(errs, "; "))
	}
	if errs := validation.IsValidLabelValue(td); len(errs) > 0 {
		return fmt.Errorf("trustbundle: trust domain %q cannot label a ClusterTrustBundle: %s", td, strings.Join(errs, "; "))
	}
	return nil
}

// Publisher keeps ClusterTrustBundle Name(SignerName, TrustDomain) equal
// to the trust bundle: created when missing, updated when the roots
// change, repaired when edited. Like the ConfigMaps it writes only a
// bundle that carries its Owner (or no owner, which it adopts) and backs
// off from one that another writer keeps changing. Writing it needs
// "attest" on the signer (the API server's admission checks it).
type Publisher struct {
	Client      kubernetes.Interface
	SignerName  string
	TrustDomain string
	// Bundle is the trust bundle, PEM, signing root first: the live one
	// in serve; in warden check, the one the bundle should hold.
	Bundle func() []byte
	Owner  string // this install (its namespace); default warden-system
	Log    *slog.Logger
	Resync time.Duration // default 10m
	Now    func() time.Time

	guard *kube.Guard
	loop  *kube.Loop
	mu    sync.Mutex
	sent  [][32]byte // the last bundles published: replacing one is an update, not a repair
	list  certlisters.ClusterTrustBundleLister
}

// The cluster's ClusterTrustBundle.
var (
	_ bundle.Consumer = (*Publisher)(nil)
	_ bundle.Runner   = (*Publisher)(nil)
	_ bundle.Checker  = (*Publisher)(nil)
)

func (p *Publisher) name() string { return Name(p.SignerName, p.TrustDomain) }

// Name implements bundle.Consumer.
func (p *Publisher) Name() string { return "clustertrustbundle" }

// Scope implements bundle.Consumer: the leader writes it.
func (p *Publisher) Scope() bundle.Scope { return bundle.Cluster }

func (p *Publisher) defaults() {
	p.Log, p.Resync, p.Owner = kube.WriterDefaults(p.Log, p.Resync, p.Owner)
	if p.Now == nil {
		p.Now = time.Now
	}
}

// Run publishes until ctx is done. Call it on the leader only.
func (p *Publisher) Run(ctx context.Context) error {
	p.defaults()
	if err := Validate(p.SignerName, p.TrustDomain); err != nil {
		return err
	}
	p.guard = kube.NewGuard(p.Owner, "ClusterTrustBundle", p.Log, p.Now)
	loop := kube.NewLoop("clustertrustbundle", p.Log, p.reconcile)
	f := informers.NewSharedInformerFactoryWithOptions(p.Client, p.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + p.name()
	}))
	inf := f.Certificates().V1().ClusterTrustBundles()
	enqueue := func(any) { loop.Add(p.name()) }
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	if err := kube.StartAndSync(ctx, "clustertrustbundle", f); err != nil {
		return err
	}
	p.mu.Lock()
	p.list, p.loop = inf.Lister(), loop
	p.mu.Unlock()
	loop.Add(p.name()) // created when there is none
	loop.Run(ctx, 1)
	return nil
}

// Changed implements bundle.Consumer: the roots changed, publish them.
func (p *Publisher) Changed([]*x509.Certificate) {
	p.mu.Lock()
	loop := p.loop
	p.mu.Unlock()
	if loop != nil {
		loop.Add(p.name())
	}
}

// published records want as published, and says whether old was
// published before it (so that replacing it is an update).
func (p *Publisher) published(old, want []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w := sha256.Sum256(want); !slices.Contains(p.sent, w) {
		p.sent = append(p.sent, w)
		if len(p.sent) > 4 {
			p.sent = p.sent[1:]
		}
	}
	return old != nil && slices.Contains(p.sent, sha256.Sum256(old))
}

func (p *Publisher) labels() map[string]string {
	return map[string]string{TrustDomainLabel: p.TrustDomain, "app.kubernetes.io/managed-by": "warden"}
}

func (p *Publisher) reconcile(ctx context.Context, name string) (time.Duration, error) {
	want := p.Bundle()
	if len(want) == 0 {
		return 0, nil // no roots yet (a Vault intermediate on its way): Changed brings them
	}
	api := p.Client.CertificatesV1().ClusterTrustBundles()
	cur, err := p.list.Get(name)
	switch {
	case apierrors.IsNotFound(err):
		b := &certv1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: p.labels()},
			Spec:       certv1.ClusterTrustBundleSpec{SignerName: p.SignerName, TrustBundle: string(want)},
		}
		p.guard.Annotate(&b.ObjectMeta)
		_, err = api.Create(ctx, b, metav1.CreateOptions{FieldManager: kube.FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return 0, nil // the informer brings it and we compare
		}
		if err != nil {
			return 0, fmt.Errorf("trustbundle: create ClusterTrustBundle %s: %w", name, err)
		}
		p.published(nil, want)
		p.Log.Info("published trust bundle", "clusterTrustBundle", name, "signer", p.SignerName)
		return 0, nil
	case err != nil:
		return 0, err
	}
	p.published(nil, want)
	labelled := true
	for k, v := range p.labels() {
		labelled = labelled && cur.Labels[k] == v
	}
	same := cur.Spec.TrustBundle == string(want) && labelled
	if same && p.guard.Owned(cur) {
		return 0, nil
	}
	if ok, retry := p.guard.MayWrite(name, cur); !ok {
		return retry, nil
	}
	fixed := cur.DeepCopy()
	fixed.Spec.TrustBundle = string(want)
	if fixed.Labels == nil {
		fixed.Labels = map[string]string{}
	}
	for k, v := range p.labels() {
		fixed.Labels[k] = v
	}
	p.guard.Annotate(&fixed.ObjectMeta)
	if _, err := api.Update(ctx, fixed, metav1.UpdateOptions{FieldManager: kube.FieldManager}); err != nil {
		return 0, fmt.Errorf("trustbundle: update ClusterTrustBundle %s: %w", name, err)
	}
	switch {
	case same:
		p.Log.Info("adopted ClusterTrustBundle", "clusterTrustBundle", name, "owner", p.Owner)
	case p.published([]byte(cur.Spec.TrustBundle), want):
		p.Log.Info("updated trust bundle", "clusterTrustBundle", name)
	default:
		p.guard.Wrote(name)
		p.Log.Info("rewrote ClusterTrustBundle: it held roots warden does not serve (edited by another writer, or written before a root change)", "clusterTrustBundle", name)
	}
	return 0, nil
}

// Missing implements bundle.Consumer: whether this install's
// ClusterTrustBundle holds the root fp. Another install's is that
// install's to keep (the publisher reports it), not one to wait for.
func (p *Publisher) Missing(fp string) (total int, missing []string) {
	what := "clustertrustbundle " + p.name()
	p.mu.Lock()
	list := p.list
	p.mu.Unlock()
	if list == nil {
		return 1, []string{what + " (this replica does not publish it)"}
	}
	cur, err := list.Get(p.name())
	if err == nil && kube.OtherOwner(cur.ObjectMeta, p.owner()) {
		return 0, nil
	}
	if err == nil && kube.HoldsRoot([]byte(cur.Spec.TrustBundle), fp) {
		return 1, nil
	}
	return 1, []string{what}
}

func (p *Publisher) owner() string {
	if p.Owner == "" {
		return kube.DefaultOwner
	}
	return p.Owner
}

// Check implements bundle.Checker: the ClusterTrustBundle exists, holds
// the root fp, and holds the roots of the trust bundle (Bundle), no more
// and no fewer.
func (p *Publisher) Check(ctx context.Context, fp string, _ time.Time) []check.Result {
	const what = "clustertrustbundle"
	name := p.name()
	cur, err := p.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return []check.Result{{Check: what, Status: check.Error, Message: fmt.Sprintf("ClusterTrustBundle %s is missing: pods mounting a clusterTrustBundle volume for signer %s get no roots (is warden's leader running?)", name, p.SignerName)}}
	case err != nil:
		return []check.Result{{Check: what, Status: check.Error, Message: fmt.Sprintf("ClusterTrustBundle %s: %v", name, err)}}
	case kube.OtherOwner(cur.ObjectMeta, p.owner()):
		return []check.Result{{Check: what, Status: check.Warn, Message: fmt.Sprintf("ClusterTrustBundle %s belongs to another warden install (%s=%s)", name, kube.OwnerAnnotation, cur.Annotations[kube.OwnerAnnotation])}}
	case !kube.HoldsRoot([]byte(cur.Spec.TrustBundle), fp):
		return []check.Result{{Check: what, Status: check.Error, Message: fmt.Sprintf("ClusterTrustBundle %s lacks the signing root: pods that mount it refuse new certificates", name)}}
	}
	if p.Bundle != nil {
		if lacks, extra := diff(p.Bundle(), []byte(cur.Spec.TrustBundle)); len(lacks)+len(extra) > 0 {
			var parts []string
			if len(lacks) > 0 {
				parts = append(parts, "lacks "+strings.Join(lacks, ", "))
			}
			if len(extra) > 0 {
				parts = append(parts, "holds roots the mesh does not trust: "+strings.Join(extra, ", "))
			}
			return []check.Result{{Check: what, Status: check.Error, Message: fmt.Sprintf("ClusterTrustBundle %s differs from the trust bundle: it %s", name, strings.Join(parts, "; "))}}
		}
	}
	certs, _ := ca.ParseCerts([]byte(cur.Spec.TrustBundle))
	return []check.Result{{Check: what, Status: check.OK, Message: fmt.Sprintf("ClusterTrustBundle %s holds the trust bundle (%d root(s))", name, len(certs))}}
}

// diff lists the roots of want that got lacks and those it holds beyond
// them, by subject and fingerprint.
func diff(want, got []byte) (lacks, extra []string) {
	w, _ := ca.ParseCerts(want)
	g, _ := ca.ParseCerts(got)
	describe := func(c *x509.Certificate) string {
		return fmt.Sprintf("%s (sha256 %s)", c.Subject, ca.Fingerprint(c)[:16])
	}
	has := func(set []*x509.Certificate, c *x509.Certificate) bool {
		return slices.ContainsFunc(set, func(o *x509.Certificate) bool { return bytes.Equal(o.Raw, c.Raw) })
	}
	for _, c := range w {
		if !has(g, c) {
			lacks = append(lacks, describe(c))
		}
	}
	for _, c := range g {
		if !has(w, c) {
			extra = append(extra, describe(c))
		}
	}
	return lacks, extra
}
