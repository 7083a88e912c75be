package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/token"
)

// Caller is an authenticated client of the CA.
type Caller struct {
	ID     spiffeid.ID
	Method string // "jwt", "mtls", "tokenreview", ...
	// Kubernetes is set for a caller authenticated by the Kubernetes API
	// server (TokenReview) alone: what it said of the token. Nil for
	// every other credential (an SVID, a JWT checked offline), so such a
	// caller never has a pod to stand for.
	Kubernetes *KubernetesCaller
}

// KubernetesCaller is what a TokenReview says of a service-account
// token (Istio's security.KubernetesInfo): the account, and for a token
// bound to a pod (kubectl create token --bound-object-kind Pod, or the
// kubelet's projected token) the pod's name and UID, from the review's
// extras authentication.kubernetes.io/pod-name and pod-uid. The pod is
// in the account's namespace.
type KubernetesCaller struct {
	Namespace, ServiceAccount string
	PodName, PodUID           string // empty for a token bound to no pod
}

// Authenticator establishes who is calling. It returns ErrNoCredentials when
// the call carries no credential of its kind, so the chain can try the
// next one; any other error is a credential of its kind that failed.
type Authenticator interface {
	Authenticate(ctx context.Context) (*Caller, error)
}

// ErrNoCredentials means an authenticator found nothing to check.
var ErrNoCredentials = errors.New("no credentials")

// ErrUnavailable marks an authenticator that could not check a
// credential (the API server it asks is unreachable, or refuses warden
// itself): the caller is answered Unavailable and may retry; its
// credential is not counted as a forged one.
var ErrUnavailable = errors.New("authentication unavailable")

// Authenticate runs the chain: the first success wins; otherwise every
// failure is reported, so a client sees why its token or certificate was
// refused. Its errors carry no gRPC status: callers add their own.
//
// When no authenticator succeeded and one could not check at all
// (ErrUnavailable), the error wraps ErrUnavailable.
func Authenticate(ctx context.Context, chain ...Authenticator) (*Caller, error) {
	var msgs []string
	unavailable := false
	for _, a := range chain {
		c, err := a.Authenticate(ctx)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, ErrNoCredentials) {
			msgs = append(msgs, err.Error())
		}
		unavailable = unavailable || errors.Is(err, ErrUnavailable)
	}
	if len(msgs) == 0 {
		return nil, errors.New("no credentials: send authorization: Bearer <token> or a client certificate")
	}
	if unavailable {
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, strings.Join(msgs, "; "))
	}
	return nil, errors.New(strings.Join(msgs, "; "))
}

// BearerToken extracts the token from gRPC metadata "authorization: Bearer
// <token>" with token.FromAuthorization (RFC 6750; the scheme
// case-insensitive). It returns ErrNoCredentials when there is none.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	tok, err := token.FromAuthorization(md.Get("authorization"))
	if errors.Is(err, token.ErrNoToken) {
		return "", ErrNoCredentials
	}
	return tok, err
}

// TokenVerifier checks a bearer token and names its service account.
type TokenVerifier interface {
	Verify(raw string) (token.Verified, error)
}

var _ TokenVerifier = (*token.Verifier)(nil)

// JWTAuthenticator accepts service-account JWTs checked offline, caching
// successful verifications until the token expires.
type JWTAuthenticator struct {
	Verifier    TokenVerifier
	TrustDomain spiffeid.TrustDomain
	Clock       ca.Clock
	Cache       TokenCache
}

var _ Authenticator = (*JWTAuthenticator)(nil)

// Authenticate implements Authenticator.
func (j *JWTAuthenticator) Authenticate(ctx context.Context) (*Caller, error) {
	raw, err := BearerToken(ctx)
	if err != nil {
		if errors.Is(err, ErrNoCredentials) {
			return nil, err
		}
		return nil, fmt.Errorf("jwt: %w", err)
	}
	now := clockOf(j.Clock).Now()
	if c, ok := j.Cache.Get(raw, now); ok {
		return c, nil
	}
	v, err := j.Verifier.Verify(raw)
	if err != nil {
		return nil, fmt.Errorf("jwt: %w", err)
	}
	id, err := spiffeid.FromSegments(j.TrustDomain, "ns", v.Namespace, "sa", v.Name)
	if err != nil {
		return nil, fmt.Errorf("jwt: identity: %w", err)
	}
	c := &Caller{ID: id, Method: "jwt"}
	j.Cache.Put(raw, c, v.Expiry, now)
	return c, nil
}

// TokenCache remembers which caller a bearer token authenticated, keyed by
// the token's SHA-256 (the token itself is not kept), until a given
// expiry. It is bounded: when full, expired entries go first, then
// arbitrary ones. The zero value is ready to use.
type TokenCache struct {
	// Size bounds the entries (default 10,000).
	Size int

	mu      sync.Mutex
	entries map[[32]byte]cacheEntry
	swept   time.Time // the last sweep of expired entries
}

type cacheEntry struct {
	caller *Caller
	exp    time.Time
}

// Get returns the cached caller for raw if it has not expired at now.
func (t *TokenCache) Get(raw string, now time.Time) (*Caller, bool) {
	k := sha256.Sum256([]byte(raw))
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[k]
	if !ok {
		return nil, false
	}
	if !now.Before(e.exp) {
		delete(t.entries, k)
		return nil, false
	}
	return e.caller, true
}

// Put caches c for raw until exp.
func (t *TokenCache) Put(raw string, c *Caller, exp, now time.Time) {
	if !now.Before(exp) {
		return
	}
	k := sha256.Sum256([]byte(raw))
	size := t.Size
	if size <= 0 {
		size = 10000
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.entries == nil {
		t.entries = make(map[[32]byte]cacheEntry)
	}
	if len(t.entries) >= size {
		// Expired entries are swept at most once a second: a full cache
		// of live tokens (a scale-up) must not cost a scan per token.
		if now.Sub(t.swept) >= time.Second {
			t.swept = now
			for key, e := range t.entries {
				if !now.Before(e.exp) {
					delete(t.entries, key)
				}
			}
		}
		for key := range t.entries {
			if len(t.entries) < size {
				break
			}
			delete(t.entries, key)
		}
	}
	t.entries[k] = cacheEntry{caller: c, exp: exp}
}

// Len is the number of cached tokens.
func (t *TokenCache) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// SVIDAuthenticator accepts a client certificate that is a valid X.509 SVID
// from this CA's bundle: workloads renewing with their current identity.
// The TLS layer only requests the certificate; the chain and expiry are
// checked here so a stale SVID gets a clear Unauthenticated status instead
// of a failed handshake.
type SVIDAuthenticator struct {
	Bundle func() *x509bundle.Bundle
	Clock  ca.Clock
}

var _ Authenticator = (*SVIDAuthenticator)(nil)

// Authenticate implements Authenticator.
func (s *SVIDAuthenticator) Authenticate(ctx context.Context) (*Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, ErrNoCredentials
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, ErrNoCredentials
	}
	b := s.Bundle()
	if b == nil {
		return nil, errors.New("mtls: no trust bundle loaded")
	}
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, b, x509svid.WithTime(clockOf(s.Clock).Now()))
	if err != nil {
		return nil, fmt.Errorf("mtls: client certificate: %w", err)
	}
	return &Caller{ID: id, Method: "mtls"}, nil
}

func clockOf(c ca.Clock) ca.Clock {
	if c == nil {
		return ca.SystemClock{}
	}
	return c
}
