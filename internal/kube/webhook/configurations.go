package webhook

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

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	admreglisters "k8s.io/client-go/listers/admissionregistration/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube"
)

// Where the API server reaches the validator: warden's Service exposes
// ServicePort (targetPort: the --webhook-listen port, 15017 as istiod's),
// as istiod's Service does.
const (
	ServiceName = "warden"
	ServicePort = int32(443)
)

// IstiodService is the Service warden replaces in istiod's place
// (deploy/istiod-compat; --istiod-names serves its names).
var IstiodService = Ref{Namespace: "istio-system", Name: "istiod"}

// Ref names a Service.
type Ref struct{ Namespace, Name string }

func (r Ref) String() string { return r.Name + "." + r.Namespace }

// calls says whether a webhook's clientConfig calls Service r.
func calls(cc admregv1.WebhookClientConfig, r Ref) bool {
	return cc.Service != nil && cc.Service.Namespace == r.Namespace && cc.Service.Name == r.Name
}

// Configurations keeps the ValidatingWebhookConfigurations whose
// webhooks call warden's Service (Warden): their caBundle is the trust
// bundle, so the API server trusts warden's serving certificate through
// a root rotation. In istiod's place (Istiod set), the webhooks that call
// istiod's Service are pointed at warden's Service first (port
// ServicePort, path kept): the API server cannot follow the ExternalName
// Service that stands for istiod (with aggregator routing it refuses
// one; without, it would need the cluster's DNS). Istiod itself keeps the
// caBundle of its revision's webhook configurations
// (pkg/webhooks/validation/controller); warden selects them by the
// Service they call instead of a revision label.
//
// The leader runs it (a Cluster bundle.Consumer); a rotation waits until
// every such webhook holds the new root.
type Configurations struct {
	Client kubernetes.Interface
	Bundle func() []byte // PEM roots
	Warden Ref           // warden's Service: its name and the install's namespace
	Istiod *Ref          // the Service warden stands in for; nil outside istiod's place
	Owner  string        // this install (its namespace); default warden-system
	Log    *slog.Logger
	Resync time.Duration // default 10m
	Now    func() time.Time

	guard   *kube.Guard
	mu      sync.Mutex
	sent    [][32]byte      // the last bundles written: replacing one is an update, not a repair
	adopted map[string]bool // configurations written once (later rewrites of others' changes are repairs)
	loop    *kube.Loop
	list    admreglisters.ValidatingWebhookConfigurationLister
}

var (
	_ bundle.Consumer = (*Configurations)(nil)
	_ bundle.Runner   = (*Configurations)(nil)
	_ bundle.Checker  = (*Configurations)(nil)
)

// Name implements bundle.Consumer.
func (c *Configurations) Name() string { return "webhooks" }

// Scope implements bundle.Consumer: the leader writes them.
func (c *Configurations) Scope() bundle.Scope { return bundle.Cluster }

// Changed implements bundle.Consumer: every configuration is looked at
// again.
func (c *Configurations) Changed([]*x509.Certificate) {
	if c.loop == nil || c.list == nil {
		return
	}
	all, _ := c.list.List(labels.Everything())
	for _, w := range all {
		c.loop.Add(w.Name)
	}
}

// Run keeps the configurations until ctx is done. Call it on the leader
// only.
func (c *Configurations) Run(ctx context.Context) error {
	c.Log, c.Resync, c.Owner = kube.WriterDefaults(c.Log, c.Resync, c.Owner)
	if c.Now == nil {
		c.Now = time.Now
	}
	c.adopted = map[string]bool{}
	c.guard = kube.NewGuard(c.Owner, "ValidatingWebhookConfiguration", c.Log, c.Now)
	c.loop = kube.NewLoop("webhooks", c.Log, c.reconcile)
	f := informers.NewSharedInformerFactory(c.Client, c.Resync)
	inf := f.Admissionregistration().V1().ValidatingWebhookConfigurations()
	c.list = inf.Lister()
	enqueue := func(obj any) {
		if w, ok := kube.Tombstone(obj).(*admregv1.ValidatingWebhookConfiguration); ok {
			c.loop.Add(w.Name)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) },
	}); err != nil {
		return err
	}
	if err := kube.StartAndSync(ctx, "webhooks", f); err != nil {
		return err
	}
	c.reportInjectors(ctx)
	c.loop.Run(ctx, 1)
	return nil
}

// reportInjectors logs, once, the mutating webhooks that still call
// istiod: warden does not inject sidecars, so the pods they select
// cannot be created.
func (c *Configurations) reportInjectors(ctx context.Context) {
	if c.Istiod == nil {
		return
	}
	mwcs, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		c.Log.Warn("could not list MutatingWebhookConfigurations to find injectors that call istiod", "error", err.Error())
		return
	}
	for _, m := range mwcs.Items {
		for _, w := range m.Webhooks {
			if calls(w.ClientConfig, *c.Istiod) {
				c.Log.Error(injectorMessage(m.Name, w.Name, *c.Istiod))
			}
		}
	}
}

func injectorMessage(config, hook string, istiod Ref) string {
	return fmt.Sprintf("MutatingWebhookConfiguration %s: webhook %s calls %s, which warden replaces and does not serve (warden injects no sidecars): the API server refuses the pods it selects. "+
		"Inject workloads with istioctl kube-inject and delete the configuration (docs/install-kubernetes.md, In istiod's place)", config, hook, istiod)
}

// desired is w's webhooks as warden keeps them; changed says whether
// any differs, rerouted whether one was pointed away from istiod.
func (c *Configurations) desired(w *admregv1.ValidatingWebhookConfiguration, bundle []byte) (out *admregv1.ValidatingWebhookConfiguration, changed, rerouted bool) {
	out = w.DeepCopy()
	for i := range out.Webhooks {
		cc := &out.Webhooks[i].ClientConfig
		if c.Istiod != nil && calls(*cc, *c.Istiod) {
			port := ServicePort
			cc.Service = &admregv1.ServiceReference{Namespace: c.Warden.Namespace, Name: c.Warden.Name, Path: cc.Service.Path, Port: &port}
			changed, rerouted = true, true
		}
		if calls(*cc, c.Warden) && !bytes.Equal(cc.CABundle, bundle) {
			cc.CABundle = bundle
			changed = true
		}
	}
	return out, changed, rerouted
}

func (c *Configurations) reconcile(ctx context.Context, name string) (time.Duration, error) {
	w, err := c.list.Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	want := c.Bundle()
	fixed, changed, rerouted := c.desired(w, want)
	if !changed {
		return 0, nil
	}
	if ok, retry := c.guard.MayWrite(name, w); !ok {
		return retry, nil
	}
	// Replacing a bundle warden wrote is an update; anything else done
	// to a configuration warden already wrote is a repair, counted
	// toward backing off from another writer.
	repair := rerouted
	for _, h := range w.Webhooks {
		if calls(h.ClientConfig, c.Warden) && len(h.ClientConfig.CABundle) > 0 && !bytes.Equal(h.ClientConfig.CABundle, want) && !c.wasSent(h.ClientConfig.CABundle) {
			repair = true
		}
	}
	c.guard.Annotate(&fixed.ObjectMeta)
	if _, err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, fixed, metav1.UpdateOptions{FieldManager: kube.FieldManager}); err != nil {
		return 0, err
	}
	c.sentBundle(want)
	c.mu.Lock()
	first := !c.adopted[name]
	c.adopted[name] = true
	c.mu.Unlock()
	switch {
	case first && rerouted:
		c.Log.Info("pointed istiod's validating webhooks at warden", "configuration", name, "service", c.Warden.String())
	case first:
		c.Log.Info("updated a validating webhook configuration's caBundle", "configuration", name)
	case repair:
		c.guard.Wrote(name)
		c.Log.Info("repaired a validating webhook configuration another writer changed", "configuration", name)
	default:
		c.Log.Info("updated a validating webhook configuration's caBundle", "configuration", name)
	}
	return 0, nil
}

func (c *Configurations) sentBundle(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := sha256.Sum256(b)
	if !slices.Contains(c.sent, d) {
		c.sent = append(c.sent, d)
		if len(c.sent) > 4 {
			c.sent = c.sent[1:]
		}
	}
}

func (c *Configurations) wasSent(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.sent, sha256.Sum256(b))
}

// Missing implements bundle.Consumer: the webhooks that call warden (or
// istiod, in its place) whose caBundle lacks the root fp. Only the
// leader, which keeps them, can tell.
func (c *Configurations) Missing(fp string) (total int, missing []string) {
	if c.list == nil {
		return 1, []string{"validating webhook configurations (this replica does not keep them)"}
	}
	all, err := c.list.List(labels.Everything())
	if err != nil {
		return 1, []string{"validating webhook configurations: " + err.Error()}
	}
	for _, w := range all {
		if kube.OtherOwner(w.ObjectMeta, c.Owner) {
			continue
		}
		for _, h := range w.Webhooks {
			toIstiod := c.Istiod != nil && calls(h.ClientConfig, *c.Istiod)
			if !toIstiod && !calls(h.ClientConfig, c.Warden) {
				continue
			}
			total++
			if toIstiod || !kube.HoldsRoot(h.ClientConfig.CABundle, fp) {
				missing = append(missing, "validatingwebhookconfiguration "+w.Name+" webhook "+h.Name)
			}
		}
	}
	slices.Sort(missing)
	return total, missing
}

// Check implements bundle.Checker: every validating webhook that calls
// warden trusts the root fp; none still calls istiod where warden
// stands in its place (its Service an ExternalName), validating or
// mutating.
func (c *Configurations) Check(ctx context.Context, fp string, _ time.Time) []check.Result {
	cl := c.Client.AdmissionregistrationV1()
	vwcs, err := cl.ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []check.Result{{Check: "webhooks", Status: check.Error, Message: "listing ValidatingWebhookConfigurations: " + err.Error()}}
	}
	istiod := IstiodService
	if c.Istiod != nil {
		istiod = *c.Istiod
	}
	replaced := false
	if svc, err := c.Client.CoreV1().Services(istiod.Namespace).Get(ctx, istiod.Name, metav1.GetOptions{}); err == nil && svc.Spec.Type == corev1.ServiceTypeExternalName {
		replaced = true
	}
	var out []check.Result
	var current, stale, toIstiod []string
	for _, w := range vwcs.Items {
		for _, h := range w.Webhooks {
			name := w.Name + "/" + h.Name
			switch {
			case calls(h.ClientConfig, c.Warden) && kube.HoldsRoot(h.ClientConfig.CABundle, fp):
				current = append(current, name)
			case calls(h.ClientConfig, c.Warden):
				stale = append(stale, name)
			case replaced && calls(h.ClientConfig, istiod):
				toIstiod = append(toIstiod, name)
			}
		}
	}
	if len(current) > 0 && len(stale) == 0 {
		out = append(out, check.Result{Check: "webhooks", Status: check.OK, Message: fmt.Sprintf("%d validating webhooks call warden and trust its root", len(current))})
	}
	if len(stale) > 0 {
		out = append(out, check.Result{Check: "webhooks", Status: check.Error, Message: fmt.Sprintf("validating webhooks %s call warden but their caBundle lacks the signing root: the API server refuses warden's certificate, and Istio configuration cannot be applied (is warden's leader running with --webhook-listen?)", strings.Join(stale, ", "))})
	}
	if len(toIstiod) > 0 {
		out = append(out, check.Result{Check: "webhooks", Status: check.Error, Message: fmt.Sprintf("validating webhooks %s call %s, an ExternalName standing for warden that the API server cannot follow: Istio configuration cannot be applied. warden's leader points them at warden when it serves the webhook (--webhook-listen, deploy/istiod-compat)", strings.Join(toIstiod, ", "), istiod)})
	}
	if replaced {
		mwcs, err := cl.MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
		if err != nil {
			return append(out, check.Result{Check: "webhooks", Status: check.Error, Message: "listing MutatingWebhookConfigurations: " + err.Error()})
		}
		for _, m := range mwcs.Items {
			for _, h := range m.Webhooks {
				if calls(h.ClientConfig, istiod) {
					out = append(out, check.Result{Check: "webhooks", Status: check.Error, Message: injectorMessage(m.Name, h.Name, istiod)})
				}
			}
		}
	}
	return out
}
