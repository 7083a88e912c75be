package federation_test

import (
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/federation"
)

var local = spiffeid.RequireTrustDomainFromString("cluster.local")

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newRoot(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "test", CommonName: name, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	return m.Roots[0]
}

func parse(t *testing.T, td spiffeid.TrustDomain, doc []byte) *spiffebundle.Bundle {
	t.Helper()
	if err := federation.CheckDocument(doc); err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(td, doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEndpointSequence: the sequence is the change's Unix time, and rises
// by one at least when changes come within one second (a rotation's three
// steps), also for a reorder alone (activation); the same roots again, or
// none, change nothing.
func TestEndpointSequence(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	a, b := newRoot(t, "A"), newRoot(t, "B")
	ep, err := federation.NewEndpoint(federation.EndpointConfig{TrustDomain: local, RefreshHint: 90 * time.Second, Clock: clock}, []*x509.Certificate{a})
	if err != nil {
		t.Fatal(err)
	}
	seq := func() uint64 { _, s := ep.Document(); return s }
	if seq() != 1_000_000 {
		t.Fatalf("first sequence %d, want the Unix time", seq())
	}
	var got []uint64
	for _, roots := range [][]*x509.Certificate{{a, b}, {b, a}, {b}} {
		ep.Changed(roots)
		got = append(got, seq())
	}
	if got[0] != 1_000_001 || got[1] != 1_000_002 || got[2] != 1_000_003 {
		t.Fatalf("sequences %v, want 1000001..1000003", got)
	}
	ep.Changed([]*x509.Certificate{b})
	ep.Changed(nil)
	if seq() != 1_000_003 {
		t.Fatalf("no change moved the sequence to %d", seq())
	}
	clock.Add(time.Hour)
	ep.Changed([]*x509.Certificate{a})
	if seq() != 1_003_600 {
		t.Fatalf("sequence %d an hour later, want 1003600", seq())
	}
	doc, _ := ep.Document()
	bundle := parse(t, local, doc)
	if h, _ := bundle.RefreshHint(); h != 90*time.Second {
		t.Errorf("refresh hint %s", h)
	}
}

// TestEndpointMissingForOneRefreshHint: a new root counts as missing from
// the endpoint until it has been served for one refresh hint.
func TestEndpointMissingForOneRefreshHint(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	a, b := newRoot(t, "A"), newRoot(t, "B")
	ep, _ := federation.NewEndpoint(federation.EndpointConfig{TrustDomain: local, RefreshHint: time.Minute, Clock: clock}, []*x509.Certificate{a})
	if n, missing := ep.Missing(ca.Fingerprint(b)); n != 1 || len(missing) != 1 || missing[0] != "bundle endpoint" {
		t.Fatalf("before publishing: %d %q", n, missing)
	}
	ep.Changed([]*x509.Certificate{a, b})
	clock.Add(59 * time.Second)
	if _, missing := ep.Missing(ca.Fingerprint(b)); len(missing) != 1 || !strings.Contains(missing[0], "its peers poll every 1m0s") {
		t.Fatalf("within the hint: %q", missing)
	}
	clock.Add(time.Second)
	if _, missing := ep.Missing(ca.Fingerprint(b)); len(missing) != 0 {
		t.Fatalf("after the hint: %q", missing)
	}
	// A reorder does not restart the wait.
	ep.Changed([]*x509.Certificate{b, a})
	if _, missing := ep.Missing(ca.Fingerprint(b)); len(missing) != 0 {
		t.Fatalf("after a reorder: %q", missing)
	}
}

// TestEndpointHTTP: GET and HEAD answer the document as JSON; other
// methods are 405.
func TestEndpointHTTP(t *testing.T) {
	t.Parallel()
	ep, _ := federation.NewEndpoint(federation.EndpointConfig{TrustDomain: local}, []*x509.Certificate{newRoot(t, "A")})
	for _, c := range []struct {
		method string
		code   int
	}{{http.MethodGet, 200}, {http.MethodHead, 200}, {http.MethodPost, 405}, {http.MethodPut, 405}} {
		w := httptest.NewRecorder()
		ep.ServeHTTP(w, httptest.NewRequest(c.method, "/any/path", nil))
		if w.Code != c.code {
			t.Errorf("%s: %d, want %d", c.method, w.Code, c.code)
		}
		if c.code == 200 && w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", c.method, w.Header().Get("Content-Type"))
		}
		if c.method == http.MethodGet {
			parse(t, local, w.Body.Bytes())
		}
	}
}

// TestCheckDocument: SPIRE's rules, each broken once, with the whole
// message.
func TestCheckDocument(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ doc, want string }{
		{`{"keys":[{"kty":"EC","x5c":["AA=="]}]}`, "federation: bundle key 0 has no use"},
		{`{"keys":[{"use":"x509-svid","x5c":["AA=="]}]}`, "federation: bundle key 0 has no kty"},
		{`{"keys":[{"kty":"EC","use":"x509-svid"}]}`, "federation: bundle key 0 (x509-svid) has 0 x5c certificates, not exactly one"},
		{`{"keys":[{"kty":"EC","use":"x509-svid","x5c":["AA==","AA=="]}]}`, "federation: bundle key 0 (x509-svid) has 2 x5c certificates, not exactly one"},
		{`{"keys":[{"kty":"EC","use":"jwt-svid"}]}`, "federation: bundle key 0 (jwt-svid) has no kid"},
		{`{"keys":null}`, "federation: bundle has no keys"},
		{`[]`, "federation: bundle is not a JSON key set: json: cannot unmarshal array into Go value of type struct { Keys []federation.keyDoc \"json:\\\"keys\\\"\" }"},
	} {
		err := federation.CheckDocument([]byte(c.doc))
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: %v, want %q", c.doc, err, c.want)
		}
	}
}
