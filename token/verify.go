package token

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wardenmesh/warden/ca"
)

// ErrInvalid marks every verification failure; the message says which check
// failed.
var ErrInvalid = errors.New("invalid token")

// Verifier checks tokens offline against a JWKS.
type Verifier struct {
	Issuer    string              // required iss
	Audiences []string            // token must name one of these (default DefaultAudience)
	Keys      *jose.JSONWebKeySet // public keys
	Clock     ca.Clock            // default the system clock
	Leeway    time.Duration       // clock skew allowed on exp/nbf/iat (default 0)
	// MaxLifetime refuses tokens valid for longer (exp - iat, or exp - now
	// without iat): a token that never ends would be cached and honoured
	// for ever. Default DefaultMaxLifetime.
	MaxLifetime time.Duration
}

// DefaultMaxLifetime is the longest token lifetime accepted by default.
const DefaultMaxLifetime = 24 * time.Hour

// Verified is what a valid token asserts.
type Verified struct {
	ServiceAccount
	Expiry time.Time
}

// Verify checks raw and returns the service account it asserts. Errors wrap
// ErrInvalid and never include the token itself.
func (v *Verifier) Verify(raw string) (Verified, error) {
	tok, c, err := Parse(raw)
	if err != nil {
		return Verified{}, err
	}
	if len(tok.Headers) != 1 {
		return Verified{}, fmt.Errorf("token: %w: want exactly one signature", ErrInvalid)
	}
	kid := tok.Headers[0].KeyID
	var keys []jose.JSONWebKey
	if v.Keys != nil {
		if kid != "" {
			keys = v.Keys.Key(kid)
		} else {
			keys = v.Keys.Keys
		}
	}
	if len(keys) == 0 {
		return Verified{}, fmt.Errorf("token: %w: no key in the JWKS matches key id %q", ErrInvalid, kid)
	}
	verified := false
	for _, k := range keys {
		// Verify only: c, decoded by Parse, is the same payload's.
		if err := tok.Claims(k.Key); err == nil {
			verified = true
			break
		}
	}
	if !verified {
		return Verified{}, fmt.Errorf("token: %w: signature does not verify", ErrInvalid)
	}
	if c.Issuer != v.Issuer {
		return Verified{}, fmt.Errorf("token: %w: issuer %q is not trusted (want %q)", ErrInvalid, c.Issuer, v.Issuer)
	}
	auds := v.Audiences
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	if !slices.ContainsFunc(auds, func(a string) bool { return slices.Contains(c.Audience, a) }) {
		return Verified{}, fmt.Errorf("token: %w: audience [%s] does not include %s", ErrInvalid, strings.Join(c.Audience, ", "), strings.Join(auds, " or "))
	}
	clock := v.Clock
	if clock == nil {
		clock = ca.SystemClock{}
	}
	now := clock.Now()
	if c.Expiry == nil {
		return Verified{}, fmt.Errorf("token: %w: no exp claim", ErrInvalid)
	}
	exp := c.Expiry.Time()
	if !now.Before(exp.Add(v.Leeway)) {
		return Verified{}, fmt.Errorf("token: %w: expired at %s", ErrInvalid, exp.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil && now.Add(v.Leeway).Before(c.NotBefore.Time()) {
		return Verified{}, fmt.Errorf("token: %w: not valid before %s", ErrInvalid, c.NotBefore.Time().UTC().Format(time.RFC3339))
	}
	start := now
	if c.IssuedAt != nil {
		start = c.IssuedAt.Time()
		if start.After(now.Add(v.Leeway)) {
			return Verified{}, fmt.Errorf("token: %w: issued in the future (iat %s; the clock skew allowed is %s)", ErrInvalid, start.UTC().Format(time.RFC3339), v.Leeway)
		}
	}
	maxLife := v.MaxLifetime
	if maxLife == 0 {
		maxLife = DefaultMaxLifetime
	}
	if life := exp.Sub(start); life > maxLife+v.Leeway {
		return Verified{}, fmt.Errorf("token: %w: valid for %s, longer than the %s allowed", ErrInvalid, life.Round(time.Second), maxLife)
	}
	sa, err := ParseSubject(c.Subject)
	if err != nil {
		return Verified{}, fmt.Errorf("%w (%w)", err, ErrInvalid)
	}
	return Verified{ServiceAccount: sa, Expiry: exp}, nil
}

// Parse decodes a compact JWS without verifying it, returning the token and
// its registered claims. It rejects anything but the accepted algorithms.
func Parse(raw string) (*jwt.JSONWebToken, *jwt.Claims, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, nil, fmt.Errorf("token: %w: empty", ErrInvalid)
	}
	if strings.Count(raw, ".") != 2 {
		return nil, nil, fmt.Errorf("token: %w: malformed: want three dot-separated parts", ErrInvalid)
	}
	tok, err := jwt.ParseSigned(raw, Algorithms)
	if err != nil {
		return nil, nil, fmt.Errorf("token: %w: malformed: %v", ErrInvalid, err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, nil, fmt.Errorf("token: %w: malformed claims: %v", ErrInvalid, err)
	}
	return tok, &c, nil
}

// LoadKeySet reads a JWKS JSON file, e.g. a Kubernetes API server's
// /openid/v1/jwks.
func LoadKeySet(path string) (*jose.JSONWebKeySet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	var ks jose.JSONWebKeySet
	if err := json.Unmarshal(b, &ks); err != nil {
		return nil, fmt.Errorf("token: %s: %w", path, err)
	}
	if len(ks.Keys) == 0 {
		return nil, fmt.Errorf("token: %s: JWKS holds no keys", path)
	}
	for i, k := range ks.Keys {
		if !k.IsPublic() {
			return nil, fmt.Errorf("token: %s: key %d (%q) is not a public key", path, i, k.KeyID)
		}
	}
	return &ks, nil
}
