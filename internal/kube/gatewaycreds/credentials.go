// Package gatewaycreds serves gateways their TLS credentials from the
// Secrets that a Gateway's credentialName names, as istiod does.
package gatewaycreds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/xds"
)

// Watcher follows the Secrets a Gateway's credentialName names, as
// istiod does: every Secret except service-account tokens and Helm
// releases is watched (a Secret's data stays in the informer's memory
// only), and a change calls OnChange with its namespace, so that the
// gateways there are pushed the new certificate.
type Watcher struct {
	Client   kubernetes.Interface
	Log      *slog.Logger
	OnChange func(namespace string)
	Clock    ca.Clock // nil: the system's
	lister   atomic.Pointer[corelisters.SecretLister]

	reviewMu sync.Mutex
	reviews  map[string]review // namespace/serviceaccount -> the last answer
}

var _ xds.SecretAccess = (*Watcher)(nil)

// review is a SubjectAccessReview's answer, kept until until.
type review struct {
	err   error
	until time.Time
}

// How long SubjectAccessReview answers are kept (istiod's: an allowed
// answer five minutes, a denied one one minute), and how many at most.
const (
	reviewAllowedTTL = 5 * time.Minute
	reviewDeniedTTL  = time.Minute
	maxReviews       = 4096
)

// MayReadSecrets implements xds.SecretAccess as istiod decides it: a
// SubjectAccessReview asking whether system:serviceaccount:<ns>:<sa>
// may list secrets in ns (no groups, as istiod sends none). Answers are
// cached, at most maxReviews of them; a review that fails is not cached
// and refuses (the gateway's listener waits for its credential).
func (g *Watcher) MayReadSecrets(ctx context.Context, ns, sa string) error {
	clock := g.Clock
	if clock == nil {
		clock = ca.SystemClock{}
	}
	key := ns + "/" + sa
	now := clock.Now()
	g.reviewMu.Lock()
	r, ok := g.reviews[key]
	g.reviewMu.Unlock()
	if ok && now.Before(r.until) {
		return r.err
	}
	user := "system:serviceaccount:" + ns + ":" + sa
	res, err := g.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User:               user,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: "list", Resource: "secrets"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("gateway credentials: SubjectAccessReview for %s: %w (does warden's ClusterRole allow creating subjectaccessreviews?)", user, err)
	}
	r = review{until: now.Add(reviewAllowedTTL)}
	if !res.Status.Allowed {
		why := res.Status.Reason
		if why == "" {
			why = "no RBAC rule allows it"
		}
		r = review{until: now.Add(reviewDeniedTTL), err: fmt.Errorf("%w: service account %s/%s may not list secrets in namespace %s (%s): grant it with a Role and RoleBinding, as Istio requires of gateways", xds.ErrNotAuthorized, ns, sa, ns, why)}
	}
	g.reviewMu.Lock()
	if g.reviews == nil {
		g.reviews = map[string]review{}
	}
	if len(g.reviews) >= maxReviews {
		for k, old := range g.reviews { // the expired first
			if !now.Before(old.until) {
				delete(g.reviews, k)
			}
		}
		for k := range g.reviews { // then any
			if len(g.reviews) < maxReviews {
				break
			}
			delete(g.reviews, k)
		}
	}
	g.reviews[key] = r
	g.reviewMu.Unlock()
	return r.err
}

// Run watches until ctx is done.
func (g *Watcher) Run(ctx context.Context) error {
	if g.Log == nil {
		g.Log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactoryWithOptions(g.Client, 10*time.Minute, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "type!=" + string(corev1.SecretTypeServiceAccountToken) + ",type!=helm.sh/release.v1"
	}))
	inf := f.Core().V1().Secrets()
	changed := func(obj any) {
		if s, ok := kube.Tombstone(obj).(*corev1.Secret); ok && g.OnChange != nil && g.lister.Load() != nil {
			g.OnChange(s.Namespace)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed, UpdateFunc: func(_, n any) { changed(n) }, DeleteFunc: changed,
	}); err != nil {
		return err
	}
	lister := inf.Lister()
	if err := kube.StartAndSync(ctx, "gateway-credentials", f); err != nil {
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

// Lookup returns Secret ns/name; false until the first list is done, or
// when there is no such Secret.
func (g *Watcher) Lookup(ns, name string) (*xds.Secret, bool) {
	l := g.lister.Load()
	if l == nil {
		return nil, false
	}
	s, err := (*l).Secrets(ns).Get(name)
	if err != nil {
		return nil, false
	}
	return &xds.Secret{Type: string(s.Type), Data: s.Data}, true
}
