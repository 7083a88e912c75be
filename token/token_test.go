package token_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/token"
)

type fixedClock struct{ t time.Time }

func (c *fixedClock) Now() time.Time { return c.t }

var t0 = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)

func newIssuer(t testing.TB, name string, clock ca.Clock) *token.Issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return issuerWithKey(t, name, key, clock)
}

func issuerWithKey(t testing.TB, name string, key *ecdsa.PrivateKey, clock ca.Clock) *token.Issuer {
	t.Helper()
	iss, err := token.NewIssuer(name, key, clock)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func TestMintVerify(t *testing.T) {
	t.Parallel()
	clock := &fixedClock{t0}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss := issuerWithKey(t, "warden", key, clock)
	other := newIssuer(t, "warden", clock)
	v := &token.Verifier{Issuer: "warden", Keys: iss.KeySet(), Clock: clock}
	sa := token.ServiceAccount{Namespace: "default", Name: "sleep"}
	mint := func(i *token.Issuer, sa token.ServiceAccount, aud []string, ttl time.Duration) string {
		tok, err := i.Mint(sa, aud, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := mint(iss, sa, nil, time.Hour)
	got, err := v.Verify(good)
	if err != nil || got.ServiceAccount != sa || !got.Expiry.Equal(t0.Add(time.Hour)) {
		t.Fatalf("Verify = %+v, %v", got, err)
	}

	// An unsigned token claiming the same subject.
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	payload := strings.Split(good, ".")[1]
	hmacKey := []byte("public key bytes an attacker knows")
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: hmacKey}, nil)
	hsTok, _ := jwt.Signed(hs).Claims(jwt.Claims{Issuer: "warden", Subject: sa.Subject(), Audience: jwt.Audience{"istio-ca"}, Expiry: jwt.NewNumericDate(t0.Add(time.Hour))}).Serialize()
	tampered := strings.Split(good, ".")
	tampered[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"warden","sub":"system:serviceaccount:kube-system:admin","aud":["istio-ca"],"exp":9999999999}`))

	cases := []struct {
		name  string
		tok   string
		clock time.Time
		want  string
	}{
		{"expired", good, t0.Add(2 * time.Hour), "token: invalid token: expired at 2026-05-01T01:00:00Z"},
		{"not yet valid", good, t0.Add(-time.Hour), "token: invalid token: not valid before 2026-05-01T00:00:00Z"},
		{"wrong audience", mint(iss, sa, []string{"vault"}, time.Hour), t0, "token: invalid token: audience [vault] does not include istio-ca"},
		{"wrong issuer", mint(issuerWithKey(t, "kubernetes", key, clock), sa, nil, time.Hour), t0, `token: invalid token: issuer "kubernetes" is not trusted (want "warden")`},
		{"signed by another key", mint(other, sa, nil, time.Hour), t0, `token: invalid token: no key in the JWKS matches key id "` + kidOf(t, other) + `"`},
		{"tampered payload", strings.Join(tampered, "."), t0, "token: invalid token: signature does not verify"},
		{"alg none", header + "." + payload + ".", t0, "token: invalid token: malformed: "},
		{"HMAC", hsTok, t0, "token: invalid token: malformed: "},
		{"garbage", "not-a-jwt", t0, "token: invalid token: malformed: want three dot-separated parts"},
		{"empty", "  ", t0, "token: invalid token: empty"},
		{"three garbage parts", "a.b.c", t0, "token: invalid token: malformed: "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fixedClock{tc.clock}
			v := &token.Verifier{Issuer: "warden", Keys: iss.KeySet(), Clock: clock}
			_, err := v.Verify(tc.tok)
			if !errors.Is(err, token.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %q\nwant  %q", err, tc.want)
			}
			if strings.Contains(err.Error(), tc.tok) && len(tc.tok) > 20 {
				t.Fatal("error message contains the token")
			}
		})
	}
}

func kidOf(t *testing.T, i *token.Issuer) string {
	t.Helper()
	return i.KeySet().Keys[0].KeyID
}

func TestParseSubject(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"system:serviceaccount:default:sleep":                     "",
		"system:serviceaccount:a-b:x.y":                           "",
		"system:serviceaccounts:default:sleep":                    `token: subject "system:serviceaccounts:default:sleep" is not a service account (want system:serviceaccount:<namespace>:<name>)`,
		"system:serviceaccount:default":                           `token: subject "system:serviceaccount:default" has no service account name`,
		"system:serviceaccount:Default:sleep":                     `token: subject "system:serviceaccount:Default:sleep": namespace "Default" is not a DNS-1123 label`,
		"system:serviceaccount:default:sl/eep":                    `token: subject "system:serviceaccount:default:sl/eep": service account name "sl/eep" is not a DNS-1123 subdomain`,
		"system:serviceaccount:default:a:b":                       `token: subject "system:serviceaccount:default:a:b": service account name "a:b" is not a DNS-1123 subdomain`,
		"system:serviceaccount:-x:y":                              `token: subject "system:serviceaccount:-x:y": namespace "-x" is not a DNS-1123 label`,
		"system:serviceaccount:default:..":                        `token: subject "system:serviceaccount:default:..": service account name ".." is not a DNS-1123 subdomain`,
		"system:serviceaccount:" + strings.Repeat("a", 64) + ":x": `token: subject "system:serviceaccount:` + strings.Repeat("a", 64) + `:x": namespace "` + strings.Repeat("a", 64) + `" is not a DNS-1123 label`,
	}
	for sub, want := range cases {
		_, err := token.ParseSubject(sub)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("ParseSubject(%q) = %q, want %q", sub, got, want)
		}
	}
}

func TestMintRejectsBadInput(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, "warden", nil)
	if _, err := iss.Mint(token.ServiceAccount{Namespace: "NS", Name: "x"}, nil, time.Hour); err == nil {
		t.Error("minted a token for an invalid namespace")
	}
	if _, err := iss.Mint(token.ServiceAccount{Namespace: "ns", Name: "x"}, nil, 0); err == nil {
		t.Error("minted a token with no lifetime")
	}
}

// TestClockSkewAndLifetime: a token issued in the future (beyond the
// leeway) or valid for longer than the maximum is refused, so it is never
// cached for long; within them it passes.
func TestClockSkewAndLifetime(t *testing.T) {
	t.Parallel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	ks := &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), Algorithm: "ES256", Use: "sig"}}}
	v := &token.Verifier{Issuer: "warden", Keys: ks, Clock: &fixedClock{t0}, Leeway: time.Minute, MaxLifetime: 24 * time.Hour}
	sign := func(iat, exp time.Time) string {
		c := jwt.Claims{Issuer: "warden", Subject: "system:serviceaccount:default:sleep", Audience: jwt.Audience{"istio-ca"}, Expiry: jwt.NewNumericDate(exp)}
		if !iat.IsZero() {
			c.IssuedAt = jwt.NewNumericDate(iat)
		}
		tok, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, c := range []struct {
		iat, exp time.Time
		want     string
	}{
		{t0.Add(-time.Hour), t0.Add(time.Hour), ""},
		{t0.Add(30 * time.Second), t0.Add(time.Hour), ""}, // within the leeway
		{t0.Add(10 * time.Minute), t0.Add(time.Hour), "token: invalid token: issued in the future (iat 2026-05-01T00:10:00Z; the clock skew allowed is 1m0s)"},
		{t0, t0.Add(10 * 365 * 24 * time.Hour), "token: invalid token: valid for 87600h0m0s, longer than the 24h0m0s allowed"},
		{time.Time{}, t0.Add(48 * time.Hour), "token: invalid token: valid for 48h0m0s, longer than the 24h0m0s allowed"},
	} {
		_, err := v.Verify(sign(c.iat, c.exp))
		if (c.want == "" && err != nil) || (c.want != "" && (err == nil || err.Error() != c.want)) {
			t.Errorf("iat %v exp %v: %v, want %q", c.iat, c.exp, err, c.want)
		}
	}
}
