package vault_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
)

// recordingProxy is a reverse proxy on loopback in front of a test Vault
// that records each request's method, path and X-Vault-Namespace values.
// It forwards the header unchanged: OSS Vault, which has only the root
// namespace, accepts it and ignores it (TestNamespaceHeader passes
// against it), so nothing needs stripping.
type recordingProxy struct {
	URL string

	mu   sync.Mutex
	seen []string // "<method> <path> ns=<values>"
}

func newRecordingProxy(t *testing.T, v *vaulttest.Server) *recordingProxy {
	t.Helper()
	target, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	pemCA, err := os.ReadFile(v.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatalf("no certificate in %s", v.CACert)
	}
	p := &recordingProxy{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			ns := r.In.Header.Values("X-Vault-Namespace")
			p.mu.Lock()
			p.seen = append(p.seen, fmt.Sprintf("%s %s ns=%s", r.In.Method, r.In.URL.Path, strings.Join(ns, ",")))
			p.mu.Unlock()
			r.SetURL(target)
		},
		// A fresh connection per request, and each answer read whole
		// (retried up to three times) before it is passed on: under load
		// the proxy's connection to Vault was closed under a response body
		// ("use of closed network connection", and warden saw an EOF). The
		// proxy is the test's, not what it checks; Rewrite records each of
		// warden's requests once, however often the proxy retries.
		Transport: bufferingTransport{&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}},
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// bufferingTransport reads each response whole, retrying a request whose
// answer could not be read.
type bufferingTransport struct{ base http.RoundTripper }

func (b bufferingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
	}
	var lastErr error
	for range 3 {
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		resp, err := b.base.RoundTrip(r)
		if err == nil {
			var data []byte
			data, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(data)), int64(len(data))
				return resp, nil
			}
		}
		lastErr = err
		if req.Context().Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func (p *recordingProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// TestNamespaceHeader: with a namespace configured, every request warden
// makes (token lookup, AppRole login, the signature, the root fetch, the
// token's renewal in Run) carries X-Vault-Namespace with it, once;
// without one, none does.
func TestNamespaceHeader(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	v.RunDoc(t, dir, nil, "setup", "token")
	for _, ns := range []string{"team-a/mesh", ""} {
		t.Run("namespace="+ns, func(t *testing.T) {
			p := newRecordingProxy(t, v)
			auths := []vault.Auth{
				vault.Token{Token: readFile(t, dir, "warden-token")},
				vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")},
			}
			var up *vault.Upstream
			for _, auth := range auths {
				var err error
				up, err = vault.New(context.Background(), vault.Config{Address: p.URL, Namespace: ns, Auth: auth})
				if err != nil {
					t.Fatalf("%s: %v", auth, err)
				}
				if _, err := up.SignIntermediate(context.Background(), csrRequest(t)); err != nil {
					t.Fatalf("%s: %v", auth, err)
				}
			}
			// Run's lifetime watcher renews the AppRole token at once.
			renew := "PUT /v1/auth/token/renew-self ns=" + ns
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- up.Run(ctx) }()
			deadline := time.Now().Add(20 * time.Second)
			for !slices.Contains(p.requests(), renew) {
				if time.Now().After(deadline) {
					cancel()
					t.Fatalf("Run renewed no token through the proxy: %q", p.requests())
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			<-done
			want := []string{
				"GET /v1/auth/token/lookup-self ns=" + ns,
				"PUT /v1/pki/root/sign-intermediate ns=" + ns,
				"GET /v1/pki/ca/pem ns=" + ns,
				"PUT /v1/auth/approle/login ns=" + ns,
				"PUT /v1/pki/root/sign-intermediate ns=" + ns,
				"GET /v1/pki/ca/pem ns=" + ns,
				renew,
			}
			got := p.requests()
			for len(got) > len(want) && got[len(got)-1] == renew {
				got = got[:len(got)-1] // more renewals, same header
			}
			if !slices.Equal(got, want) {
				t.Fatalf("requests through the proxy:\n got %q\nwant %q", p.requests(), want)
			}
		})
	}
}
