package server_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn/oidc"
	"github.com/wardenmesh/warden/xds/server"
)

// failingIssuer is an issuer whose discovery document is unavailable; it
// counts the requests for it.
func failingIssuer(t *testing.T) (url string, requests *atomic.Int64) {
	requests = &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, requests
}

// TestDroppedIssuerIsNoLongerFetched: every configuration applied tells
// OIDC discovery which issuers it names; one that a new configuration no
// longer names stops being fetched, while a failing issuer still named
// goes on being retried. (Before, a failed issuer was retried for as long
// as the control plane ran.)
func TestDroppedIssuerIsNoLongerFetched(t *testing.T) {
	dropped, droppedAsked := failingIssuer(t)
	kept, keptAsked := failingIssuer(t)
	keys := oidc.New(oidc.Config{Retry: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond})
	srv, _ := startADS(t, func(cfg *server.Config) { cfg.Options.JWTKeys = keys })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- keys.Run(ctx, srv.JWTKeysChanged) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	apply := func(issuers ...string) {
		objs, services := server.FlaskappExample(t)
		ra := &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt", Namespace: "default"}}
		for _, iss := range issuers {
			ra.Spec.JWTRules = append(ra.Spec.JWTRules, api.JWTRule{Issuer: iss})
		}
		if err := srv.Apply(append(objs, ra), services); err != nil {
			t.Fatal(err)
		}
		// A proxy the rules apply to has its configuration compiled.
		proxyConfig(t, srv, "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local")
	}
	// The deadlines below only fail a test that would otherwise hang.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("still waiting for %s", what)
			}
		}
	}

	apply(dropped, kept)
	waitFor("the dropped issuer's retries", func() bool { return droppedAsked.Load() >= 3 })
	apply(kept)
	before, keptBefore := droppedAsked.Load(), keptAsked.Load()
	// The kept issuer's retries are the clock: five of them.
	waitFor("the kept issuer's retries", func() bool { return keptAsked.Load() >= keptBefore+5 })
	if n := droppedAsked.Load() - before; n > 1 { // one may have been under way
		t.Fatalf("an issuer no configuration names was fetched %d more times", n)
	}
}
