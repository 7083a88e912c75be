// Package tokenreview authenticates callers of the CA by their
// Kubernetes service-account tokens, asking the API server
// (TokenReview) as Istio's CA does.
package tokenreview

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/token"
)

// Authenticator authenticates bearer tokens by asking the
// Kubernetes API server (TokenReview), as Istio's CA does. A token must be
// authenticated for one of Audiences, its user must be in group
// system:serviceaccounts, and its username must be
// system:serviceaccount:<ns>:<sa>. Accepted tokens are cached by hash until
// the token expires, or MaxCacheTTL, whichever is first. The caller it
// returns carries what the review said (server.KubernetesCaller): the
// account, and the pod a bound token names, which the node authorizer
// (internal/kube/nodeauth) checks against the pods running now (a cached
// review, like the API server's own 10 s cache of its reviews, may
// outlive the pod).
//
// The clusterid header is not read here: warden's Kubernetes mode
// reviews every token with its one API server (istiod picks the API
// server of the cluster the header names, and refuses a cluster it does
// not know). The node authorizer refuses an impersonation whose header
// names another cluster.
type Authenticator struct {
	Client      kubernetes.Interface
	TrustDomain spiffeid.TrustDomain
	Audiences   []string      // default istio-ca
	MaxCacheTTL time.Duration // default 5m; 0 keeps the default, negative disables caching
	Clock       ca.Clock
	Timeout     time.Duration // per review, default 10s
	Cache       server.TokenCache
	// Observe, when set, hears of every bearer token checked: answered
	// from the cache, or reviewed (taking d; err when refused or failed).
	Observe func(d time.Duration, cached bool, err error)
}

var _ server.Authenticator = (*Authenticator)(nil)

// Authenticate implements server.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context) (*server.Caller, error) {
	raw, err := server.BearerToken(ctx)
	if err != nil {
		if errors.Is(err, server.ErrNoCredentials) {
			return nil, err
		}
		return nil, fmt.Errorf("tokenreview: %w", err)
	}
	now := a.now()
	if c, ok := a.Cache.Get(raw, now); ok {
		if a.Observe != nil {
			a.Observe(0, true, nil)
		}
		return c, nil
	}
	start := time.Now()
	c, err := a.review(ctx, raw, now)
	if a.Observe != nil {
		a.Observe(time.Since(start), false, err)
	}
	return c, err
}

// review asks the API server about raw and caches an accepted token.
func (a *Authenticator) review(ctx context.Context, raw string, now time.Time) (*server.Caller, error) {
	auds := a.Audiences
	if len(auds) == 0 {
		auds = []string{token.DefaultAudience}
	}
	timeout := a.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(rctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: raw, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		// The token was not judged: the API server did not answer, or
		// refused warden itself. Unavailable, not a forged token.
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("%w: tokenreview: warden may not create TokenReviews (%v): grant it create on tokenreviews.authentication.k8s.io (deploy/warden/rbac.yaml)", server.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("%w: tokenreview: the API server did not review the token: %v; new workloads cannot be authenticated until it answers (tokens already reviewed still are)", server.ErrUnavailable, err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return nil, fmt.Errorf("tokenreview: token rejected for audiences [%s]: %s", strings.Join(auds, ", "), msg)
	}
	if !slices.Contains(st.User.Groups, "system:serviceaccounts") {
		return nil, fmt.Errorf("tokenreview: user %q is not a service account (not in group system:serviceaccounts)", st.User.Username)
	}
	sa, err := token.ParseSubject(st.User.Username)
	if err != nil {
		return nil, fmt.Errorf("tokenreview: %w", err)
	}
	if len(st.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(x string) bool { return slices.Contains(auds, x) }) {
		return nil, fmt.Errorf("tokenreview: token audiences [%s] do not include %s", strings.Join(st.Audiences, ", "), strings.Join(auds, " or "))
	}
	id, err := spiffeid.FromSegments(a.TrustDomain, "ns", sa.Namespace, "sa", sa.Name)
	if err != nil {
		return nil, fmt.Errorf("tokenreview: identity: %w", err)
	}
	c := &server.Caller{ID: id, Method: "tokenreview", Kubernetes: &server.KubernetesCaller{
		Namespace: sa.Namespace, ServiceAccount: sa.Name,
		PodName: extra(st.User.Extra, PodNameKey), PodUID: extra(st.User.Extra, PodUIDKey),
	}}
	if exp, ok := a.cacheUntil(raw, now); ok {
		a.Cache.Put(raw, c, exp, now)
	}
	return c, nil
}

// The keys of a TokenReview's extras naming the pod a token is bound to
// (Kubernetes' serviceaccount package; Istio's tokenreview reads the same).
const (
	PodNameKey = "authentication.kubernetes.io/pod-name"
	PodUIDKey  = "authentication.kubernetes.io/pod-uid"
)

// extra is the first value of key, as istiod reads it.
func extra(e map[string]authnv1.ExtraValue, key string) string {
	if v := e[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// cacheUntil is the token's exp claim (read without verifying: the API
// server just vouched for it), capped at MaxCacheTTL from now.
func (a *Authenticator) cacheUntil(raw string, now time.Time) (time.Time, bool) {
	ttl := a.MaxCacheTTL
	switch {
	case ttl < 0:
		return time.Time{}, false
	case ttl == 0:
		ttl = 5 * time.Minute
	}
	limit := now.Add(ttl)
	_, claims, err := token.Parse(raw)
	if err != nil || claims.Expiry == nil {
		return time.Time{}, false // legacy tokens without exp are re-reviewed every time
	}
	if exp := claims.Expiry.Time(); exp.Before(limit) {
		return exp, true
	}
	return limit, true
}

func (a *Authenticator) now() time.Time {
	if a.Clock == nil {
		return time.Now()
	}
	return a.Clock.Now()
}
