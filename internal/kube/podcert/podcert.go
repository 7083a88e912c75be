// Package podcert makes warden a Kubernetes pod-certificate signer
// (KEP-4317, certificates.k8s.io/v1 PodCertificateRequest): a pod mounts
// a podCertificate projected volume naming warden's signer, its kubelet
// creates a PodCertificateRequest with a stub CSR for a key it keeps,
// and the leader's Signer writes the pod's SPIFFE SVID into the
// request's status, after checking the pod itself. warden check reads
// the requests too (Check).
package podcert

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	certlisters "k8s.io/client-go/listers/certificates/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/podcache"
)

// DefaultSigner is warden's signer name. deploy/warden/rbac.yaml grants
// "sign" and "attest" on it.
const DefaultSigner = "wardenmesh.io/spiffe"

// ValidateSignerName applies the API server's rule for signer names:
// <domain>/<path>, one '/', the domain at least two DNS labels and not
// kubernetes.io's (k8s.io/kubernetes pkg/apis/core/validation
// ValidateSignerName).
func ValidateSignerName(name string) error {
	domain, path, ok := strings.Cut(name, "/")
	switch {
	case !ok || strings.Contains(path, "/"):
		return fmt.Errorf("podcert: signer name %q must be <domain>/<path>, with one '/'", name)
	case len(validation.IsDNS1123Subdomain(domain)) > 0 || !strings.Contains(domain, "."):
		return fmt.Errorf("podcert: signer name %q: %q is not a DNS name of at least two labels", name, domain)
	case domain == "kubernetes.io" || strings.HasSuffix(domain, ".kubernetes.io"):
		return fmt.Errorf("podcert: signer name %q: kubernetes.io signers are Kubernetes' own", name)
	case len(validation.IsDNS1123Subdomain(path)) > 0:
		return fmt.Errorf("podcert: signer name %q: %q is not a valid path (lower-case DNS labels)", name, path)
	}
	return nil
}

// Observer hears of every request warden settles or puts off; the
// metrics implement it. Reasons and causes come from small fixed sets.
type Observer interface {
	// Issued is a request issued, latency after its creation.
	Issued(latency time.Duration)
	// Denied is a request denied for reason (a condition reason).
	Denied(reason string)
	// Retried is a request put off for cause: "ca_unavailable",
	// "ca_expiring", "api_error", "conflict", "rejected".
	Retried(cause string)
}

// Retry causes (Causes lists them).
const (
	causeCAUnavailable = "ca_unavailable"
	causeCAExpiring    = "ca_expiring"
	causeAPIError      = "api_error"
	causeConflict      = "conflict"
	causeRejected      = "rejected"
)

// Causes lists why a request is put off (the metrics' label values).
var Causes = []string{causeCAUnavailable, causeCAExpiring, causeAPIError, causeConflict, causeRejected}

// Signer signs the PodCertificateRequests addressed to its signer name.
// Run it on the leader only: replicas racing for a request's status
// would have all but one refused.
type Signer struct {
	Client    kubernetes.Interface
	Authority *ca.Authority
	Name      string // the signer name; default DefaultSigner
	Log       *slog.Logger
	Clock     ca.Clock
	Observer  Observer
	Workers   int           // concurrent requests; default 16
	Resync    time.Duration // default 10m
	// A request that cannot be signed now (the CA unavailable, an API
	// error) is retried after RetryBase, doubling up to RetryMax; never
	// marked Failed, which a kubelet takes as final. Defaults 250ms, 30s.
	RetryBase, RetryMax time.Duration
	// Pods is the replica's shared pod cache (podcache), which its owner
	// runs whether or not this replica leads: the signer only reads it.
	// nil: Run watches pods itself, for as long as it runs.
	Pods *podcache.Cache

	pcrs  certlisters.PodCertificateRequestLister
	pods  corelisters.PodLister
	sas   corelisters.ServiceAccountLister
	nodes corelisters.NodeLister
	queue workqueue.TypedRateLimitingInterface[string]

	mu      sync.Mutex
	waiting map[string]bool // causes logged as under way (the CA unavailable...), until a request is issued; under mu
}

func (s *Signer) defaults() {
	if s.Name == "" {
		s.Name = DefaultSigner
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.Clock == nil {
		s.Clock = ca.SystemClock{}
	}
	if s.Observer == nil {
		s.Observer = noObserver{}
	}
	if s.Workers == 0 {
		s.Workers = 16
	}
	if s.Resync == 0 {
		s.Resync = 10 * time.Minute
	}
	if s.RetryBase == 0 {
		s.RetryBase = 250 * time.Millisecond
	}
	if s.RetryMax == 0 {
		s.RetryMax = 30 * time.Second
	}
}

type noObserver struct{}

func (noObserver) Issued(time.Duration) {}
func (noObserver) Denied(string)        {}
func (noObserver) Retried(string)       {}

// Run signs until ctx is done.
func (s *Signer) Run(ctx context.Context) error {
	s.defaults()
	if err := ValidateSignerName(s.Name); err != nil {
		return err
	}
	s.mu.Lock()
	s.waiting = map[string]bool{}
	s.mu.Unlock()
	// Per request backoff only: client-go's default controller limiter
	// adds a shared 10 per second bucket, which would hold a thousand
	// requests that waited out a CA outage for a minute and a half.
	s.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](s.RetryBase, s.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "podcertificaterequests"})
	pcrF := informers.NewSharedInformerFactoryWithOptions(s.Client, s.Resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.signerName=" + s.Name
	}))
	f := informers.NewSharedInformerFactory(s.Client, s.Resync)
	pcrInf, saInf, nodeInf := pcrF.Certificates().V1().PodCertificateRequests(), f.Core().V1().ServiceAccounts(), f.Core().V1().Nodes()
	factories := []kube.InformerFactory{f, pcrF}
	pods := s.Pods
	if pods == nil {
		var err error
		if pods, err = podcache.New(s.Client, 0); err != nil {
			return err
		}
		factories = append(factories, pods)
	}
	s.mu.Lock() // Pending reads pcrs from the metrics' goroutine
	s.pcrs, s.pods, s.sas, s.nodes = pcrInf.Lister(), pods.Lister(), saInf.Lister(), nodeInf.Lister()
	s.mu.Unlock()
	defer func() {
		// A replica that no longer leads has nothing pending.
		s.mu.Lock()
		s.pcrs = nil
		s.mu.Unlock()
	}()
	enqueue := func(obj any) {
		if r, ok := obj.(*certv1.PodCertificateRequest); ok && !terminal(r) {
			s.queue.Add(r.Namespace + "/" + r.Name)
		}
	}
	if _, err := pcrInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) },
	}); err != nil {
		return err
	}
	// Listers are read before the informers start, so they exist.
	_, _ = saInf.Informer(), nodeInf.Informer()
	go func() { <-ctx.Done(); s.queue.ShutDown() }()
	if err := kube.StartAndSync(ctx, "pod certificates", factories...); err != nil {
		return err
	}
	if err := pods.WaitSynced(ctx); err != nil {
		return err
	}
	s.Log.Info("signing pod certificate requests", "signer", s.Name)
	var wg sync.WaitGroup
	for range s.Workers {
		wg.Go(func() {
			for s.next(ctx) {
			}
		})
	}
	wg.Wait()
	return nil
}

func (s *Signer) next(ctx context.Context) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	cause, err := s.reconcile(ctx, key)
	if err != nil {
		if ctx.Err() != nil {
			return true
		}
		s.Observer.Retried(cause)
		s.queue.AddRateLimited(key)
		return true
	}
	s.queue.Forget(key)
	return true
}

// Pending counts the requests warden has not settled.
func (s *Signer) Pending() int {
	s.mu.Lock()
	pcrs := s.pcrs
	s.mu.Unlock()
	if pcrs == nil {
		return 0
	}
	rs, _ := pcrs.List(labels.Everything())
	n := 0
	for _, r := range rs {
		if !terminal(r) {
			n++
		}
	}
	return n
}

// terminal says whether r is issued, denied or failed: its status can no
// longer change.
func terminal(r *certv1.PodCertificateRequest) bool { return settled(r) != nil }

// reconcile settles one request: issued, or denied with a reason. An
// error puts it off (cause says why, for the metrics).
func (s *Signer) reconcile(ctx context.Context, key string) (cause string, err error) {
	ns, name, _ := strings.Cut(key, "/")
	r, err := s.pcrs.PodCertificateRequests(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return causeAPIError, err
	}
	if terminal(r) {
		return "", nil
	}
	d, err := s.verify(ctx, r)
	if err != nil {
		s.putOff(causeAPIError, "pod certificate requests wait: the objects they are checked against cannot be read", err)
		return causeAPIError, err
	}
	if d != nil {
		return s.deny(ctx, r, d)
	}
	return s.issue(ctx, r)
}

// putOff logs, once until requests are issued again, that requests wait
// for cause.
func (s *Signer) putOff(cause, msg string, err error) {
	s.mu.Lock()
	first := !s.waiting[cause]
	s.waiting[cause] = true
	s.mu.Unlock()
	if first {
		s.Log.Warn(msg+"; retrying with backoff, never marking them Failed", "signer", s.Name, "error", err.Error())
	}
}

// resumed logs the end of every wait putOff logged.
func (s *Signer) resumed() {
	s.mu.Lock()
	var was []string
	for c := range s.waiting {
		was = append(was, c)
		delete(s.waiting, c)
	}
	s.mu.Unlock()
	if len(was) > 0 {
		s.Log.Info("issuing pod certificates again", "signer", s.Name, "after", strings.Join(was, ","))
	}
}

// write stores r's new status; a conflict or a refusal puts it off.
func (s *Signer) write(ctx context.Context, r *certv1.PodCertificateRequest) (cause string, err error) {
	_, err = s.Client.CertificatesV1().PodCertificateRequests(r.Namespace).UpdateStatus(ctx, r, metav1.UpdateOptions{FieldManager: kube.FieldManager})
	switch {
	case err == nil:
		return "", nil
	case apierrors.IsNotFound(err):
		return "", nil // deleted meanwhile: nobody waits for it
	case apierrors.IsConflict(err):
		return causeConflict, err // the informer brings the newer one
	case apierrors.IsInvalid(err) || apierrors.IsForbidden(err):
		hint := ""
		if strings.Contains(err.Error(), "not permitted to \"sign\"") || apierrors.IsForbidden(err) {
			hint = fmt.Sprintf(": grant warden \"sign\" on certificates.k8s.io signers %q and update on podcertificaterequests/status (deploy/warden/rbac.yaml)", s.Name)
		}
		s.Log.Error("the API server refused a pod certificate request's status"+hint, "namespace", r.Namespace, "request", r.Name, "error", err.Error())
		return causeRejected, err
	}
	return causeAPIError, err
}
