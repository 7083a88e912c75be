package oidc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/authn/oidc"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func jwk(t *testing.T, kid string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kty": "EC", "crv": "P-256", "kid": kid,
		"x": base64.RawURLEncoding.EncodeToString(pub[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(pub[33:])}}})
	return string(b)
}

// issuer is a real HTTP server playing an OIDC provider: discovery
// document and key set, either of which can be broken or rotated.
type issuer struct {
	mu         sync.Mutex
	srv        *httptest.Server
	jwks       string
	discovery  int    // status of the discovery document
	discovered int    // requests for it
	keysAsked  int    // requests for the key set
	names      string // the issuer the document names ("": the server's URL)
}

func newIssuer(t *testing.T, jwks string) *issuer {
	return serveIssuer(t, jwks, httptest.NewServer)
}

// serveIssuer is newIssuer on a server of start's making (TLS or not).
func serveIssuer(t *testing.T, jwks string, start func(http.Handler) *httptest.Server) *issuer {
	is := &issuer{jwks: jwks, discovery: http.StatusOK}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		defer is.mu.Unlock()
		is.discovered++
		if is.discovery != http.StatusOK {
			w.WriteHeader(is.discovery)
			return
		}
		names := is.names
		if names == "" {
			names = is.srv.URL
		}
		fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q}`, names, is.srv.URL+"/keys")
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		defer is.mu.Unlock()
		is.keysAsked++
		fmt.Fprint(w, is.jwks)
	})
	is.srv = start(mux)
	t.Cleanup(is.srv.Close)
	return is
}

func (is *issuer) set(f func(*issuer)) { is.mu.Lock(); f(is); is.mu.Unlock() }

// requests is how often the discovery document was asked for.
func (is *issuer) requests() int { is.mu.Lock(); defer is.mu.Unlock(); return is.discovered }

// TestDiscoveryAndRotation: an issuer-only rule's keys come from the
// discovery document's jwks_uri, reach the compiled jwt_authn, follow a
// key rotation at the next refresh, and survive an outage of the issuer.
func TestDiscoveryAndRotation(t *testing.T) {
	t.Parallel()
	first := jwk(t, "k1")
	is := newIssuer(t, first)
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r := oidc.New(oidc.Config{Clock: clock, Refresh: 20 * time.Minute, Retry: time.Minute})
	ctx := context.Background()

	ix, err := authn.NewIndex([]api.Object{&api.RequestAuthentication{
		Metadata: api.ObjectMeta{Name: "oidc", Namespace: "default"},
		Spec:     api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: is.srv.URL}}},
	}}, authn.Options{Keys: r})
	if err != nil {
		t.Fatal(err)
	}
	w := authn.Workload{Namespace: "default", Ports: []authn.Port{{Number: 8080, Name: "http"}}}
	inline := func() (string, []string) {
		out, err := ix.Compile(w)
		if err != nil {
			t.Fatal(err)
		}
		return out.JWT.Providers["origins-0"].GetLocalJwks().GetInlineString(), out.Settings.Conflicts
	}

	// Before discovery: a key set nobody can sign for, and a report.
	keys, reports := inline()
	if !strings.Contains(keys, "warden-no-private-key") || len(reports) != 1 || !strings.Contains(reports[0], "discovery not done yet") {
		t.Fatalf("before discovery: %s %q", keys, reports)
	}
	if !r.Sync(ctx) {
		t.Fatal("first discovery reported no change")
	}
	if keys, reports = inline(); keys != first || len(reports) != 0 {
		t.Fatalf("after discovery: %s %q", keys, reports)
	}

	// The issuer rotates its key: not seen before the refresh interval,
	// seen after it.
	second := jwk(t, "k2")
	is.set(func(is *issuer) { is.jwks = second })
	clock.add(10 * time.Minute)
	if r.Sync(ctx) {
		t.Fatal("refreshed before the interval")
	}
	clock.add(10 * time.Minute)
	if !r.Sync(ctx) {
		t.Fatal("rotation not seen at the refresh")
	}
	if keys, _ = inline(); keys != second {
		t.Fatalf("after rotation: %s", keys)
	}

	// An outage keeps the last good keys.
	is.set(func(is *issuer) { is.discovery = http.StatusServiceUnavailable })
	clock.add(21 * time.Minute)
	if r.Sync(ctx) {
		t.Fatal("an outage changed the keys")
	}
	if keys, _ = inline(); keys != second {
		t.Fatalf("during an outage: %s", keys)
	}
}

// TestDiscoveryFailuresFailClosed: an issuer that cannot be discovered
// keeps its tokens refused, the reason is reported, and a retry happens
// after the retry interval, not on every compile.
func TestDiscoveryFailuresFailClosed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	is := newIssuer(t, `{"keys":[]}`)
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// A retry every minute: no backoff (TestRetryBacksOff has it).
	r := oidc.New(oidc.Config{Clock: clock, Retry: time.Minute, RetryMax: time.Minute})
	cases := []struct {
		issuer string
		want   string
		setup  func()
	}{
		{is.srv.URL, "is not a key set with keys", nil},
		{is.srv.URL + "/", "is not a key set with keys", nil},
		{"not-a-url", `issuer "not-a-url" is not an http(s) URL, so it cannot be discovered; give jwksUri or jwks`, nil},
		{"http://127.0.0.1:1", "connect: connection refused", nil},
	}
	for _, c := range cases {
		if _, err := r.JWKS(c.issuer); !errors.Is(err, oidc.ErrPending) {
			t.Fatalf("%s: first ask: %v", c.issuer, err)
		}
	}
	r.Sync(ctx)
	for _, c := range cases {
		_, err := r.JWKS(c.issuer)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.issuer, err, c.want)
		}
	}
	is.set(func(is *issuer) { is.discovery = http.StatusNotFound })
	before := is.discovered
	r.Sync(ctx) // within the retry interval: nothing fetched
	if is.discovered != before {
		t.Errorf("retried before the interval: %d requests", is.discovered-before)
	}
	clock.add(time.Minute)
	r.Sync(ctx)
	if _, err := r.JWKS(is.srv.URL); err == nil || !strings.Contains(err.Error(), "404 Not Found") {
		t.Errorf("after retry: %v", err)
	}
	// Fixed: keys served, the issuer's tokens verify again.
	good := jwk(t, "k")
	is.set(func(is *issuer) { is.discovery, is.jwks = http.StatusOK, good })
	clock.add(time.Minute)
	if !r.Sync(ctx) {
		t.Fatal("recovery reported no change")
	}
	if keys, err := r.JWKS(is.srv.URL); err != nil || keys != good {
		t.Fatalf("after recovery: %q %v", keys, err)
	}
}

// TestRunCallsChanged: Run discovers an issuer as soon as it is asked for
// and tells the control plane, which then recompiles.
func TestRunCallsChanged(t *testing.T) {
	t.Parallel()
	keys := jwk(t, "k")
	is := newIssuer(t, keys)
	r := oidc.New(oidc.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	}()
	r.JWKS(is.srv.URL)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("Run never reported the discovered keys")
	}
	if got, err := r.JWKS(is.srv.URL); err != nil || got != keys {
		t.Fatalf("%q %v", got, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestDiscoveryDocumentMustNameItsIssuer: a discovery document that names
// another issuer than the one it was fetched for is refused (OpenID
// Connect Discovery 1.0 §4.3: identical): its key set is not even
// fetched, the issuer's tokens stay refused, and the log names both
// values. Over real TLS, as issuers serve.
func TestDiscoveryDocumentMustNameItsIssuer(t *testing.T) {
	t.Parallel()
	same := func(u string) string { return u }
	slash := func(u string) string { return u + "/" }
	cases := []struct {
		name                 string
		configured, document func(url string) string
		ok                   bool
	}{
		{"another issuer", same, func(string) string { return "https://login.example.com" }, false},
		{"a trailing slash the rule does not have", same, slash, false},
		{"the same", same, same, true},
		// Auth0's form: the issuer ends with a slash, and so does what
		// its document names.
		{"both with a trailing slash", slash, slash, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			keys := jwk(t, "k")
			is := serveIssuer(t, keys, httptest.NewTLSServer)
			configured, document := c.configured(is.srv.URL), c.document(is.srv.URL)
			is.set(func(is *issuer) { is.names = document })
			var logs strings.Builder
			r := oidc.New(oidc.Config{Client: is.srv.Client(), Log: slog.New(slog.NewTextHandler(&logs, nil))})
			r.JWKS(configured) // asked for, as by a compile
			changed := r.Sync(context.Background())
			got, err := r.JWKS(configured)
			if c.ok {
				if err != nil || got != keys || !changed {
					t.Fatalf("%q %v (changed %v)", got, err, changed)
				}
				return
			}
			msg := fmt.Sprintf("oidc: %s/.well-known/openid-configuration names issuer %q, not %q: a discovery document must name the issuer it is fetched for (OpenID Connect Discovery 1.0 §4.3); no keys are taken from it",
				is.srv.URL, document, configured)
			if err == nil || err.Error() != msg || got != "" || changed {
				t.Fatalf("got %q, %v (changed %v), want the error %q", got, err, changed, msg)
			}
			is.mu.Lock()
			asked := is.keysAsked
			is.mu.Unlock()
			if asked != 0 {
				t.Errorf("the key set was fetched %d times", asked)
			}
			if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, "issuer="+configured+" ") || !strings.Contains(l, document) {
				t.Errorf("no error logged naming both issuers:\n%s", l)
			}
		})
	}
}
