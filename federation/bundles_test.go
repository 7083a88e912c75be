package federation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	gofed "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/federation"
)

var partner = spiffeid.RequireTrustDomainFromString("partner.test")

// foreignCA is a second trust domain's CA, made in the test: warden does
// not run it.
type foreignCA struct {
	auth *ca.Authority
	root *x509.Certificate
}

func newForeignCA(t *testing.T, td spiffeid.TrustDomain, name string) *foreignCA {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: td.Name(), CommonName: name, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(ca.Config{TrustDomain: td}, m)
	if err != nil {
		t.Fatal(err)
	}
	return &foreignCA{auth: a, root: m.Roots[0]}
}

// svid issues an X509-SVID for id usable as a TLS server on loopback.
func (f *foreignCA) svid(t *testing.T, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	c, err := f.auth.IssueServing(ca.ServingOptions{ID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// forge issues a leaf for id (any trust domain) under f's root.
func forge(t *testing.T, f *foreignCA, id string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature}
	m := f.auth.Material()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Cert, &key.PublicKey, m.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// peer is a bundle endpoint that is not warden: go-spiffe's
// federation.NewHandler serving the bundle of the moment, behind a status
// the test may break.
type peer struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bundle *spiffebundle.Bundle
	cert   *tls.Certificate // https_spiffe: the SVID it presents
	status int              // 0: the handler's own
	hits   atomic.Int64
}

func (p *peer) set(roots []*x509.Certificate, seq uint64, hint time.Duration) {
	b := spiffebundle.FromX509Authorities(partner, roots)
	b.SetSequenceNumber(seq)
	if hint > 0 {
		b.SetRefreshHint(hint)
	}
	p.mu.Lock()
	p.bundle = b
	p.mu.Unlock()
}

func (p *peer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.hits.Add(1)
	p.mu.Lock()
	b, code := p.bundle, p.status
	p.mu.Unlock()
	h, err := gofed.NewHandler(partner, b)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	if code != 0 {
		w = &statusWriter{ResponseWriter: w, code: code}
	}
	h.ServeHTTP(w, r)
}

// statusWriter answers the handler's body with another status: an
// endpoint in trouble that still writes a bundle.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(int) { s.ResponseWriter.WriteHeader(s.code) }
func (s *statusWriter) Write(b []byte) (int, error) {
	s.ResponseWriter.WriteHeader(s.code)
	return s.ResponseWriter.Write(b)
}

// newWebPeer is an https_web peer (httptest's certificate).
func newWebPeer(t *testing.T, roots []*x509.Certificate, seq uint64) *peer {
	t.Helper()
	p := &peer{}
	p.set(roots, seq, time.Second)
	p.srv = httptest.NewTLSServer(p)
	t.Cleanup(p.srv.Close)
	return p
}

// newSPIFFEPeer is an https_spiffe peer presenting an SVID of f.
func newSPIFFEPeer(t *testing.T, f *foreignCA, id spiffeid.ID, seq uint64) *peer {
	t.Helper()
	p := &peer{cert: f.svid(t, id)}
	p.set([]*x509.Certificate{f.root}, seq, time.Second)
	p.srv = httptest.NewUnstartedServer(p)
	// Its own TLS listener: httptest's StartTLS would present its own
	// certificate to a client that sends no SNI.
	p.srv.Listener = tls.NewListener(p.srv.Listener, &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.cert, nil
	}})
	p.srv.Start()
	p.srv.URL = "https://" + p.srv.Listener.Addr().String()
	t.Cleanup(p.srv.Close)
	return p
}

func webRoots(p *peer) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.srv.Certificate())
	return pool
}

func webRelationship(url string) *federation.Relationship {
	return &federation.Relationship{TrustDomain: partner, URL: url, Profile: federation.HTTPSWeb, Namespaces: []string{"default"}}
}

func newBundles(t *testing.T, cfg federation.Config) *federation.Bundles {
	t.Helper()
	cfg.Local = local
	b, err := federation.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFetchHTTPSWeb: a peer's bundle over https_web, checked against the
// Web PKI roots, handed to the namespaces of the relationship only.
func TestFetchHTTPSWeb(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 7)
	var changed atomic.Int32
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p.srv.URL + "/bundle")}, WebRoots: webRoots(p)})
	b.Subscribe(func() { changed.Add(1) })
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	if got := b.ForNamespace("default")[partner]; len(got) != 1 || !got[0].Equal(f.root) {
		t.Fatalf("default gets %d roots of partner.test", len(got))
	}
	// Isolation: with the set a default workload validates with, a
	// certificate for a local identity signed by the foreign CA fails;
	// one for a partner identity passes.
	set := b.Set("default", []*x509.Certificate{newRoot(t, "local root")})
	if _, _, err := x509svid.Verify([]*x509.Certificate{forge(t, f, "spiffe://cluster.local/ns/default/sa/x")}, set); err == nil {
		t.Fatal("the foreign CA signs for the local trust domain")
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{forge(t, f, "spiffe://partner.test/ns/default/sa/y")}, set); err != nil {
		t.Fatalf("a partner.test SVID: %v", err)
	}
	if got := b.ForNamespace("other"); len(got) != 0 {
		t.Fatalf("namespace other federates with nothing, got %d trust domains", len(got))
	}
	if changed.Load() != 1 {
		t.Errorf("subscribers told %d times", changed.Load())
	}
	st := b.Status()[0]
	if st.Sequence != 7 || st.From != "fetched" || st.Stale || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
	// Without the peer's CA the endpoint is not trusted (the system roots
	// do not know httptest's).
	b2 := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p.srv.URL)}})
	if err := b2.Refresh(context.Background(), partner); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("https_web without the peer's CA: %v", err)
	}
}

// TestFetchNon200IsAnError: an endpoint that answers 503 with a bundle in
// the body is failing, and its body is not taken. go-spiffe's
// federation.FetchBundle does take it (it reads any answer's body), which
// is why warden fetches with its own client.
func TestFetchNon200IsAnError(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	other := newForeignCA(t, partner, "other root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 1)
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p.srv.URL)}, WebRoots: webRoots(p)})
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	p.set([]*x509.Certificate{other.root}, 2, time.Second)
	p.mu.Lock()
	p.status = http.StatusServiceUnavailable
	p.mu.Unlock()
	err := b.Refresh(context.Background(), partner)
	if err == nil || !strings.HasSuffix(err.Error(), "the bundle endpoint answered 503 Service Unavailable") {
		t.Fatalf("a 503: %v", err)
	}
	if got := b.Get(partner).X509Authorities(); len(got) != 1 || !got[0].Equal(f.root) {
		t.Fatal("the 503's body replaced the last good bundle")
	}
	if st := b.Status()[0]; st.LastError == "" || st.Sequence != 1 {
		t.Errorf("status after the 503: %+v", st)
	}
	got, err := gofed.FetchBundle(context.Background(), partner, p.srv.URL, gofed.WithWebPKIRoots(webRoots(p)))
	if err != nil || !got.X509Authorities()[0].Equal(other.root) {
		t.Fatalf("go-spiffe's FetchBundle on a 503: %v (this test documents that it takes the body)", err)
	}
}

// TestFetchSequenceNeverGoesBack: a bundle with a lower sequence than the
// one held is refused and the held one kept; equal or higher is taken.
func TestFetchSequenceNeverGoesBack(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	old := newForeignCA(t, partner, "old root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 10)
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p.srv.URL)}, WebRoots: webRoots(p)})
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	p.set([]*x509.Certificate{old.root}, 9, time.Second) // a stale replica
	err := b.Refresh(context.Background(), partner)
	if err == nil || !strings.Contains(err.Error(), "served sequence 9, lower than the 10 held: kept the held bundle") {
		t.Fatalf("a lower sequence: %v", err)
	}
	if !b.Get(partner).X509Authorities()[0].Equal(f.root) {
		t.Fatal("the lower sequence replaced the bundle")
	}
	p.set([]*x509.Certificate{f.root, old.root}, 11, time.Second)
	if err := b.Refresh(context.Background(), partner); err != nil || len(b.Get(partner).X509Authorities()) != 2 {
		t.Fatalf("a higher sequence: %v", err)
	}
}

// TestFetchRedirectIsNotKept: a redirect is followed for the fetch, and
// the next fetch starts at the configured URL again; a redirect to an
// http URL is refused.
func TestFetchRedirectIsNotKept(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 1)
	var first atomic.Int64
	target := p.srv.URL
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		first.Add(1)
		http.Redirect(w, r, target+"/moved", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/plain", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+p.srv.Listener.Addr().String()+"/", http.StatusFound)
	})
	front := httptest.NewUnstartedServer(mux)
	front.TLS = &tls.Config{Certificates: p.srv.TLS.Certificates}
	front.StartTLS()
	t.Cleanup(front.Close)
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(front.URL + "/")}, WebRoots: webRoots(p)})
	for range 2 {
		if err := b.Refresh(context.Background(), partner); err != nil {
			t.Fatal(err)
		}
	}
	if first.Load() != 2 || p.hits.Load() != 2 {
		t.Fatalf("configured URL asked %d times, target %d; want 2 and 2", first.Load(), p.hits.Load())
	}
	b2 := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(front.URL + "/plain")}, WebRoots: webRoots(p)})
	if err := b2.Refresh(context.Background(), partner); err == nil || !strings.Contains(err.Error(), "redirected to an invalid bundle endpoint URL") {
		t.Fatalf("a redirect to http: %v", err)
	}
}

// TestFetchHTTPSSPIFFEFollowsPeerRotation: a self-serving https_spiffe
// endpoint is authenticated with the bootstrap bundle first and the last
// fetched bundle after: the peer rotates its root (publishes both, then
// presents an SVID under the new root and drops the old) and warden
// follows; an endpoint presenting another SPIFFE ID is refused.
func TestFetchHTTPSSPIFFEFollowsPeerRotation(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root 1")
	id := spiffeid.RequireFromString("spiffe://partner.test/bundle-server")
	p := newSPIFFEPeer(t, f, id, 1)
	rel := &federation.Relationship{TrustDomain: partner, URL: p.srv.URL, Profile: federation.HTTPSSPIFFE, EndpointID: id,
		Bootstrap: spiffebundle.FromX509Authorities(partner, []*x509.Certificate{f.root}), Namespaces: []string{"*"}}
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{rel}})
	if st := b.Status()[0]; st.From != "bootstrap" || !st.Stale {
		t.Fatalf("before the first fetch: %+v", st)
	}
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	f2 := newForeignCA(t, partner, "partner root 2")
	p.set([]*x509.Certificate{f.root, f2.root}, 2, time.Second)
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.cert = f2.svid(t, id)
	p.mu.Unlock()
	p.set([]*x509.Certificate{f2.root}, 3, time.Second)
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatalf("after the peer's rotation: %v", err)
	}
	if got := b.ForNamespace("anything")[partner]; len(got) != 1 || !got[0].Equal(f2.root) {
		t.Fatal("the peer's new root alone is not held")
	}
	wrong := *rel
	wrong.EndpointID = spiffeid.RequireFromString("spiffe://partner.test/other")
	wrong.Bootstrap = spiffebundle.FromX509Authorities(partner, []*x509.Certificate{f2.root})
	b2 := newBundles(t, federation.Config{Relationships: []*federation.Relationship{&wrong}})
	if err := b2.Refresh(context.Background(), partner); err == nil || !strings.Contains(err.Error(), "unexpected ID") {
		t.Fatalf("an endpoint with another ID: %v", err)
	}
}

// TestFetchedBundleSurvivesRestart: the last good bundle is stored (0600)
// and loaded by a new Bundles while the peer is down; it keeps serving
// through failed polls and is reported stale once three intervals passed.
func TestFetchedBundleSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "federation")
	f := newForeignCA(t, partner, "partner root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 4)
	rel := webRelationship(p.srv.URL)
	b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{rel}, WebRoots: webRoots(p), Store: &federation.DirStore{Dir: dir}})
	if err := b.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "partner.test.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stored bundle: %v %v", fi, err)
	}
	p.srv.Close() // the peer goes away; warden restarts
	clock := &fakeClock{t: time.Now()}
	b2 := newBundles(t, federation.Config{Relationships: []*federation.Relationship{rel}, WebRoots: webRoots(p), Store: &federation.DirStore{Dir: dir}, Clock: clock, MinRefresh: time.Second})
	if got := b2.ForNamespace("default")[partner]; len(got) != 1 || !got[0].Equal(f.root) {
		t.Fatal("the stored bundle was not loaded")
	}
	if err := b2.Refresh(context.Background(), partner); err == nil {
		t.Fatal("a fetch from a closed endpoint succeeded")
	}
	st := b2.Status()[0]
	if st.From != "stored" || st.Sequence != 4 || st.Stale || st.LastError == "" {
		t.Fatalf("after a failed poll: %+v", st)
	}
	if len(b2.ForNamespace("default")[partner]) != 1 {
		t.Fatal("the failed poll dropped the bundle")
	}
	clock.Add(3*time.Second + time.Millisecond) // refresh hint 1 s: three intervals
	if st := b2.Status()[0]; !st.Stale {
		t.Fatalf("not stale after three intervals: %+v", st)
	}
}

// TestRefreshHintBounded: the peer's refresh hint sets the poll interval
// within [MinRefresh, MaxRefresh]; no hint means five minutes.
func TestRefreshHintBounded(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	for _, c := range []struct {
		hint, want time.Duration
	}{{0, federation.DefaultRefreshHint}, {time.Second, 10 * time.Second}, {48 * time.Hour, time.Hour}, {20 * time.Minute, 20 * time.Minute}} {
		p := newWebPeer(t, []*x509.Certificate{f.root}, 1)
		p.set([]*x509.Certificate{f.root}, 1, c.hint)
		b := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p.srv.URL)}, WebRoots: webRoots(p), MinRefresh: 10 * time.Second, MaxRefresh: time.Hour})
		if err := b.Refresh(context.Background(), partner); err != nil {
			t.Fatal(err)
		}
		if got := b.Status()[0].Interval; got != c.want {
			t.Errorf("hint %s: interval %s, want %s", c.hint, got, c.want)
		}
	}
}

// TestParseRelationships: the file form, and what it refuses.
func TestParseRelationships(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newForeignCA(t, partner, "partner root")
	os.WriteFile(filepath.Join(dir, "partner.pem"), ca.EncodeCerts(f.root), 0o600)
	good := `trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://bundles.partner.test:8443/
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: spiffe://partner.test/spire/server}
  trustDomainBundleFile: partner.pem
  namespaces: [default, payments]
- trustDomain: web.test
  bundleEndpointURL: https://web.test/bundle.json
  bundleEndpointProfile: {type: https_web}
  namespaces: ["*"]
`
	rels, err := federation.Parse([]byte(good), dir, local)
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 2 || !rels[0].SelfServing() || rels[0].Bootstrap == nil || !rels[0].Federates("payments") || rels[0].Federates("other") || !rels[1].Federates("other") {
		t.Fatalf("parsed %+v", rels)
	}
	for _, c := range []struct{ doc, want string }{
		{"trustDomains: [{trustDomain: cluster.local, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}]", "trustDomains[0]: trustDomain cluster.local is warden's own: a relationship names a foreign trust domain"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'http://x/', bundleEndpointProfile: {type: https_web}}]", `trustDomains[0]: bundleEndpointURL: "http://x/": a bundle endpoint URL is https`},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://u:p@x/', bundleEndpointProfile: {type: https_web}}]", `trustDomains[0]: bundleEndpointURL: "https://u:p@x/": a bundle endpoint URL carries no userinfo`},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: 'spiffe://a.test/s'}}]", "trustDomains[0]: the endpoint spiffe://a.test/s serves its own trust domain's bundle: give trustDomainBundle or trustDomainBundleFile to authenticate the first fetch"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: 'spiffe://b.test/s'}}]", "trustDomains[0]: the endpoint spiffe://b.test/s is in trust domain b.test, which no relationship names: add one for it (or use the endpoint's own trust domain)"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: web}}]", `trustDomains[0]: bundleEndpointProfile.type "web": want https_web or https_spiffe`},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}, namespaces: ['']}]", `trustDomains[0]: namespaces: an empty name (use "*" for every namespace)`},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}, trustDomainBundle: 'x'}]", "trustDomains[0]: trustDomainBundle is for https_spiffe; an https_web endpoint needs no bootstrap bundle"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}, {trustDomain: a.test, bundleEndpointURL: 'https://y/', bundleEndpointProfile: {type: https_web}}]", "trustDomains[1]: a.test is named twice: one relationship per trust domain"},
		{"trustDomains: [{trustDomain: a.test, endpointURL: 'https://x/'}]", `error unmarshaling JSON: while decoding JSON: json: unknown field "endpointURL"`},
	} {
		_, err := federation.Parse([]byte(c.doc), dir, local)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.doc, err, c.want)
		}
	}
	if _, err := federation.LoadFile(filepath.Join(dir, "missing.yaml"), local); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

// TestReloadFollowsTheStore: a replica that does not poll (Kubernetes
// mode's followers) takes the bundles another replica stored: new roots
// reach its subscribers, the stored time is its last good fetch, and a
// stored bundle of a lower sequence than the one held is not taken.
func TestReloadFollowsTheStore(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "federation")
	f := newForeignCA(t, partner, "partner root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 4)
	rel := webRelationship(p.srv.URL)
	leader := newBundles(t, federation.Config{Relationships: []*federation.Relationship{rel}, WebRoots: webRoots(p), Store: &federation.DirStore{Dir: dir}})
	follower := newBundles(t, federation.Config{Relationships: []*federation.Relationship{rel}, Store: &federation.DirStore{Dir: dir}})
	var told atomic.Int32
	follower.Subscribe(func() { told.Add(1) })
	follower.Reload() // nothing stored yet
	if got := follower.ForNamespace("default"); len(got) != 0 || told.Load() != 0 {
		t.Fatalf("before any fetch the follower has %d bundles, told %d times", len(got), told.Load())
	}
	if err := leader.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	follower.Reload()
	if got := follower.ForNamespace("default")[partner]; len(got) != 1 || !got[0].Equal(f.root) || told.Load() != 1 {
		t.Fatalf("after the leader's fetch the follower has %d roots, told %d times", len(got), told.Load())
	}
	st := follower.Status()[0]
	if st.From != "stored" || st.Sequence != 4 || st.LastSuccess.IsZero() || st.Stale {
		t.Fatalf("follower status %+v", st)
	}
	follower.Reload() // unchanged: nobody told
	if told.Load() != 1 {
		t.Fatalf("an unchanged store told subscribers again (%d)", told.Load())
	}
	// The peer rotates: the leader stores sequence 5, the follower follows.
	next := newForeignCA(t, partner, "partner root 2")
	p.set([]*x509.Certificate{f.root, next.root}, 5, time.Second)
	if err := leader.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	follower.Reload()
	if got := follower.ForNamespace("default")[partner]; len(got) != 2 || told.Load() != 2 {
		t.Fatalf("after the rotation the follower has %d roots, told %d times", len(got), told.Load())
	}
	// A store going back to a lower sequence (an old replica's write) is
	// not followed.
	stale := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{next.root})
	stale.SetSequenceNumber(3)
	if err := (&federation.DirStore{Dir: dir}).Save(partner, stale); err != nil {
		t.Fatal(err)
	}
	follower.Reload()
	if got := follower.ForNamespace("default")[partner]; len(got) != 2 {
		t.Fatalf("a stored sequence 3 replaced the held sequence 5: %d roots", len(got))
	}

	// A peer without sequence numbers: a bundle stored before the one
	// held was fetched (the fetching replica's own, not yet stored) is
	// not taken.
	p2 := newWebPeer(t, []*x509.Certificate{next.root}, 0)
	p2.mu.Lock()
	p2.bundle = spiffebundle.FromX509Authorities(partner, []*x509.Certificate{next.root}) // no spiffe_sequence
	p2.mu.Unlock()
	dir2 := filepath.Join(t.TempDir(), "federation")
	ds := &federation.DirStore{Dir: dir2}
	old := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{f.root})
	if err := ds.Save(partner, old); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir2, "partner.test.json"), past, past)
	fetcher := newBundles(t, federation.Config{Relationships: []*federation.Relationship{webRelationship(p2.srv.URL)}, WebRoots: webRoots(p2), Store: readOnly{ds}})
	if err := fetcher.Refresh(context.Background(), partner); err != nil {
		t.Fatal(err)
	}
	fetcher.Reload()
	if got := fetcher.ForNamespace("default")[partner]; len(got) != 1 || !got[0].Equal(next.root) {
		t.Fatal("an older stored bundle replaced the one just fetched")
	}
}

// readOnly is a Store whose writes are lost (a write not yet made).
type readOnly struct{ federation.Store }

func (readOnly) Save(spiffeid.TrustDomain, *spiffebundle.Bundle) error { return nil }

// TestSetRelationships: the relationships change while Run polls (the
// file was edited): an added trust domain is fetched at once and handed
// out, a change of namespaces takes effect at once with the bundle held,
// a changed endpoint is fetched at once, a removed trust domain is handed
// out no more; subscribers hear of each change, and an unchanged set is
// no change.
func TestSetRelationships(t *testing.T) {
	t.Parallel()
	f := newForeignCA(t, partner, "partner root")
	p := newWebPeer(t, []*x509.Certificate{f.root}, 1)
	f2 := newForeignCA(t, partner, "partner root 2")
	p2 := newWebPeer(t, []*x509.Certificate{f2.root}, 2)
	pool := webRoots(p)
	pool.AddCert(p2.srv.Certificate())
	// No poll but the one a change starts: MinRefresh is an hour.
	b := newBundles(t, federation.Config{WebRoots: pool, MinRefresh: time.Hour})
	var told atomic.Int32
	b.Subscribe(func() { told.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
		}
	}
	roots := func(ns string) []*x509.Certificate { return b.ForNamespace(ns)[partner] }
	set := func(rels ...*federation.Relationship) bool {
		t.Helper()
		changed, err := b.SetRelationships(rels)
		if err != nil {
			t.Fatal(err)
		}
		return changed
	}

	rel := webRelationship(p.srv.URL)
	if !set(rel) {
		t.Fatal("adding a relationship is no change")
	}
	eventually("the added trust domain fetched", func() bool { r := roots("default"); return len(r) == 1 && r[0].Equal(f.root) })
	if p.hits.Load() != 1 {
		t.Errorf("%d fetches after adding, want 1", p.hits.Load())
	}
	if set(webRelationship(p.srv.URL)) {
		t.Error("the same relationship again is a change")
	}

	moved := webRelationship(p.srv.URL)
	moved.Namespaces = []string{"other"}
	before := told.Load()
	set(moved)
	if len(roots("default")) != 0 || len(roots("other")) != 1 {
		t.Fatalf("after moving to namespace other: default %d roots, other %d", len(roots("default")), len(roots("other")))
	}
	if told.Load() == before {
		t.Error("subscribers not told of the new namespaces")
	}

	set(&federation.Relationship{TrustDomain: partner, URL: p2.srv.URL, Profile: federation.HTTPSWeb, Namespaces: []string{"other"}})
	eventually("the new endpoint fetched", func() bool { r := roots("other"); return len(r) == 1 && r[0].Equal(f2.root) })

	before = told.Load()
	set()
	if len(roots("other")) != 0 || b.Get(partner) != nil || len(b.Status()) != 0 {
		t.Fatalf("a removed trust domain is still handed out: %d roots, status %v", len(roots("other")), b.Status())
	}
	if told.Load() == before {
		t.Error("subscribers not told of the removal")
	}
	if _, err := b.SetRelationships([]*federation.Relationship{{TrustDomain: local, URL: p.srv.URL, Profile: federation.HTTPSWeb}}); err == nil {
		t.Error("the local trust domain taken as a relationship")
	}
}
