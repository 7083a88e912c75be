package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/wardenmesh/warden/token"
)

type fixedClock time.Time

func (c fixedClock) Now() time.Time { return time.Time(c) }

// TestTokenCacheExpiry: the node agent trusts a token the CA accepted for
// at most maxTokenCache and never past the token's own exp; a token it
// cannot read is not cached.
func TestTokenCacheExpiry(t *testing.T) {
	t.Parallel()
	now := time.Now().Truncate(time.Second)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := token.NewIssuer("warden", key, fixedClock(now))
	if err != nil {
		t.Fatal(err)
	}
	sa := token.ServiceAccount{Namespace: "default", Name: "sleep"}
	for _, c := range []struct {
		ttl  time.Duration
		want time.Time
	}{
		{2 * time.Minute, now.Add(2 * time.Minute)},
		{time.Hour, now.Add(maxTokenCache)},
	} {
		tok, err := iss.Mint(sa, nil, c.ttl)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := tokenCacheExpiry(tok, now); !ok || !got.Equal(c.want) {
			t.Errorf("token valid %s: cached until %s (%v), want %s", c.ttl, got, ok, c.want)
		}
	}
	if got, ok := tokenCacheExpiry("not-a-jwt", now); ok {
		t.Errorf("an unreadable token is cached until %s", got)
	}
}
