// Package federation is warden's side of SPIFFE Federation
// (github.com/spiffe/spiffe, standards/SPIFFE_Federation.md): the bundle
// endpoint that publishes the local trust domain's roots to other trust
// domains, the relationships that name foreign bundle endpoints, the
// fetching of their bundles (refresh hint, sequence order, last good
// bundle kept and persisted), and the set of foreign bundles kept apart by
// trust domain, never merged with the local one or each other.
//
// It is a core: net/http and go-spiffe, no gRPC, Kubernetes or Prometheus.
package federation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// DefaultRefreshHint is the spiffe_refresh_hint warden publishes unless
// told otherwise, and the poll interval for a foreign bundle that names
// none: five minutes, the standard's recommendation (SPIFFE Federation
// §4.1).
const DefaultRefreshHint = 5 * time.Minute

// EndpointConfig configures an Endpoint.
type EndpointConfig struct {
	TrustDomain spiffeid.TrustDomain
	// RefreshHint is published as spiffe_refresh_hint (whole seconds,
	// rounded up); zero means DefaultRefreshHint.
	RefreshHint time.Duration
	Clock       ca.Clock // nil: the system clock
}

// Endpoint is the document warden serves at its SPIFFE bundle endpoint:
// the local trust domain's X.509 roots, signing root first, each a JWK
// with use "x509-svid" and exactly one x5c, with spiffe_sequence and
// spiffe_refresh_hint. It publishes no jwt-svid keys: warden's token key
// signs the tokens workloads present to its CA, which are not JWT-SVIDs
// and must not be accepted by another trust domain.
//
// It is a copy of the trust bundle (Changed, Missing: a bundle.Consumer
// through bundle.Func). The sequence is the Unix time in seconds of the
// last change, at least one more than the previous one: it rises on every
// change (a rotation's publish, activation and retirement each change the
// roots or their order), across restarts without state on disk, and
// replicas with synchronised clocks serving the same roots agree to within
// the seconds between their seeing the change.
type Endpoint struct {
	cfg EndpointConfig

	mu    sync.Mutex
	roots []*x509.Certificate
	seq   uint64
	doc   []byte
	since map[string]time.Time // root fingerprint -> first served
}

// NewEndpoint makes the endpoint serving roots.
func NewEndpoint(cfg EndpointConfig, roots []*x509.Certificate) (*Endpoint, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("federation: the endpoint needs its trust domain")
	}
	if cfg.RefreshHint < 0 {
		return nil, fmt.Errorf("federation: refresh hint %s is negative", cfg.RefreshHint)
	}
	if cfg.RefreshHint == 0 {
		cfg.RefreshHint = DefaultRefreshHint
	}
	if cfg.Clock == nil {
		cfg.Clock = ca.SystemClock{}
	}
	if len(roots) == 0 {
		return nil, errors.New("federation: the endpoint needs at least one root")
	}
	e := &Endpoint{cfg: cfg, since: map[string]time.Time{}}
	if err := e.set(roots); err != nil {
		return nil, err
	}
	return e, nil
}

// Changed takes a new bundle (signing root first). An empty one is
// ignored: the endpoint keeps serving the last roots rather than a bundle
// no relying party can use (and that go-spiffe's own parser refuses).
func (e *Endpoint) Changed(roots []*x509.Certificate) {
	if len(roots) == 0 {
		return
	}
	_ = e.set(roots) // marshalling certificates that parsed cannot fail
}

func (e *Endpoint) set(roots []*x509.Certificate) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.doc != nil && ca.SameRoots(e.roots, roots) {
		return nil
	}
	now := e.cfg.Clock.Now()
	seq := max(e.seq+1, uint64(max(now.Unix(), 0)))
	b := spiffebundle.FromX509Authorities(e.cfg.TrustDomain, roots)
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(e.cfg.RefreshHint)
	doc, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("federation: marshal bundle: %w", err)
	}
	e.roots, e.seq, e.doc = roots, seq, doc
	held := map[string]time.Time{}
	for _, r := range roots {
		fp := ca.Fingerprint(r)
		if t, ok := e.since[fp]; ok {
			held[fp] = t
		} else {
			held[fp] = now
		}
	}
	e.since = held
	return nil
}

// Document returns the bundle document and its sequence number.
func (e *Endpoint) Document() (doc []byte, seq uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.doc, e.seq
}

// Missing reports the endpoint as missing the root fp until it has served
// it for one refresh hint: relying parties that poll at the hint it
// publishes have then had a chance to fetch it before it signs (the
// standard asks new keys to be published well ahead of their use, §4.1).
func (e *Endpoint) Missing(fp string) (total int, missing []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	since, ok := e.since[fp]
	switch {
	case !ok:
		return 1, []string{"bundle endpoint"}
	case e.cfg.Clock.Now().Before(since.Add(e.cfg.RefreshHint)):
		return 1, []string{fmt.Sprintf("bundle endpoint (its peers poll every %s; until %s)", e.cfg.RefreshHint, since.Add(e.cfg.RefreshHint).UTC().Format(time.RFC3339))}
	}
	return 1, nil
}

// ServeHTTP answers GET (and HEAD) on any path with the bundle, as
// application/json; the standard lets the operator choose the path.
// Nothing authenticates the caller: a bundle endpoint must not require
// client authentication (§5.2.1.3, §5.2.2.3).
func (e *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "federation: the bundle endpoint answers GET only", http.StatusMethodNotAllowed)
		return
	}
	doc, seq := e.Document()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
	w.Header().Set("ETag", strconv.Quote(strconv.FormatUint(seq, 10)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(doc)
}

// keyDoc is one JWK of a bundle, the fields the strictest reader checks.
type keyDoc struct {
	Kty string            `json:"kty"`
	Use string            `json:"use"`
	Kid string            `json:"kid"`
	X5c []json.RawMessage `json:"x5c"`
}

// CheckDocument applies the rules SPIRE enforces on a bundle document
// before go-spiffe parses it: every key has kty and use; an x509-svid key
// carries exactly one x5c; a jwt-svid key has a kid. SPIRE refuses a whole
// bundle on one bad key, so warden does too, for what it fetches and (in
// tests) for what it serves.
func CheckDocument(doc []byte) error {
	var d struct {
		Keys []keyDoc `json:"keys"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return fmt.Errorf("federation: bundle is not a JSON key set: %w", err)
	}
	if len(d.Keys) == 0 {
		return errors.New("federation: bundle has no keys")
	}
	for i, k := range d.Keys {
		switch {
		case k.Kty == "":
			return fmt.Errorf("federation: bundle key %d has no kty", i)
		case k.Use == "":
			return fmt.Errorf("federation: bundle key %d has no use", i)
		case k.Use == "x509-svid" && len(k.X5c) != 1:
			return fmt.Errorf("federation: bundle key %d (x509-svid) has %d x5c certificates, not exactly one", i, len(k.X5c))
		case k.Use == "jwt-svid" && k.Kid == "":
			return fmt.Errorf("federation: bundle key %d (jwt-svid) has no kid", i)
		}
	}
	return nil
}
