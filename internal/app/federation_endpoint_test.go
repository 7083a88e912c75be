package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	wfed "github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/testkit"
)

var localTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// webCert makes a Web PKI stand-in: a CA and a server certificate for
// 127.0.0.1 and localhost under it, written to dir as web.crt/web.key.
func webCert(t *testing.T, dir string) (pool *x509.CertPool, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test web CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bundles.test"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "web.crt"), filepath.Join(dir, "web.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, certFile, keyFile
}

// strictDocument GETs the endpoint's raw document and checks what the
// strictest reader (SPIRE) checks, the HTTP status and content type.
func strictDocument(t *testing.T, url string, tlsCfg *tls.Config) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	doc, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := wfed.CheckDocument(doc); err != nil {
		t.Fatalf("the served bundle breaks SPIRE's rules: %v\n%s", err, doc)
	}
	var d struct {
		Keys []map[string]any `json:"keys"`
		Seq  *uint64          `json:"spiffe_sequence"`
		Hint *int64           `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	for i, k := range d.Keys {
		if k["use"] != "x509-svid" {
			t.Errorf("key %d: use %v; warden publishes x509-svid keys only", i, k["use"])
		}
		if _, ok := k["kid"]; ok {
			t.Errorf("key %d: an x509-svid key carries a kid", i)
		}
	}
	if d.Seq == nil || d.Hint == nil || *d.Hint != 1 {
		t.Errorf("spiffe_sequence %v, spiffe_refresh_hint %v (want 1)", d.Seq, d.Hint)
	}
	post, err := c.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %s, want 405", post.Status)
	}
}

// TestFederationBundleEndpointSPIFFE: serve's bundle endpoint with the
// https_spiffe profile, read by go-spiffe's federation.FetchBundle over a
// real TLS connection, bootstrapped with root-cert.pem and then following
// the bundles it fetches (a self-serving endpoint, §5.2.2.4): the
// endpoint presents spiffe://cluster.local/ns/warden-system/sa/warden, the
// document is one x509-svid key per root, and spiffe_sequence rises at
// each step of a self-signed root rotation ('warden ca rotate' publish,
// activate, retire), the roots following it.
func TestFederationBundleEndpointSPIFFE(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	epAddr := testkit.FreeAddr(t)
	serve(t, data, "--bundle-endpoint-listen", epAddr, "--bundle-endpoint-refresh-hint", "1s",
		"--rotation-grace", "0s", "--auto-rotate-root", "0", "--default-ttl", "1h", "--max-ttl", "1h")
	rootPEM, err := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ca.ParseCerts(rootPEM)
	trusted := x509bundle.FromX509Authorities(localTD, roots)
	url := "https://" + epAddr + "/"
	fetch := func() (*spiffebundle.Bundle, uint64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := federation.FetchBundle(ctx, localTD, url, federation.WithSPIFFEAuth(trusted, client.ControlPlaneID(localTD)))
		if err != nil {
			t.Fatalf("FetchBundle: %v", err)
		}
		seq, ok := b.SequenceNumber()
		if !ok {
			t.Fatal("no spiffe_sequence")
		}
		trusted = b.X509Bundle() // the latest bundle validates the next fetch
		return b, seq
	}
	b0, seq0 := fetch()
	if !ca.SameRoots(b0.X509Authorities(), roots) {
		t.Fatalf("the endpoint serves %d roots, not root-cert.pem's", len(b0.X509Authorities()))
	}
	strictDocument(t, url, &tls.Config{InsecureSkipVerify: true}) // the shape; authentication is FetchBundle's above
	// A client expecting another SPIFFE ID refuses the endpoint.
	if _, err := federation.FetchBundle(context.Background(), localTD, url, federation.WithSPIFFEAuth(trusted, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/x"))); err == nil {
		t.Error("FetchBundle accepted the endpoint for another SPIFFE ID")
	}

	out := rotate(t, data, "--wait", "publish")
	if !strings.Contains(out, "phase: published") {
		t.Fatalf("publish:\n%s", out)
	}
	// The endpoint is one of the consumers the rotation counts.
	if st := rotate(t, data, "--status"); !strings.Contains(st, "bundle-endpoint: ") {
		t.Errorf("the rotation does not count the bundle endpoint:\n%s", st)
	}
	b1, seq1 := fetch()
	if seq1 <= seq0 || len(b1.X509Authorities()) != 2 || !b1.X509Authorities()[0].Equal(roots[0]) {
		t.Fatalf("after publish: sequence %d (before %d), %d roots", seq1, seq0, len(b1.X509Authorities()))
	}
	newRoot := b1.X509Authorities()[1]
	// Activation waits for the endpoint to have served the new root for
	// one refresh hint (1 s), then the new root comes first.
	rotate(t, data, "--wait", "activate")
	b2, seq2 := fetch()
	if seq2 <= seq1 || len(b2.X509Authorities()) != 2 || !b2.X509Authorities()[0].Equal(newRoot) {
		t.Fatalf("after activate: sequence %d (before %d), first root %s", seq2, seq1, b2.X509Authorities()[0].Subject)
	}
	rotate(t, data, "--wait", "--force", "retire")
	b3, seq3 := fetch()
	if seq3 <= seq2 || len(b3.X509Authorities()) != 1 || !b3.X509Authorities()[0].Equal(newRoot) {
		t.Fatalf("after retire: sequence %d (before %d), %d roots", seq3, seq2, len(b3.X509Authorities()))
	}
	t.Logf("spiffe_sequence through the rotation: %d, %d, %d, %d", seq0, seq1, seq2, seq3)
}

// TestFederationBundleEndpointWeb: the https_web profile presents the
// operator's certificate, which go-spiffe's FetchBundle checks against its
// Web PKI roots, and serves the same strict document.
func TestFederationBundleEndpointWeb(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	pool, certFile, keyFile := webCert(t, dir)
	epAddr := testkit.FreeAddr(t)
	serve(t, data, "--bundle-endpoint-listen", epAddr, "--bundle-endpoint-profile", "https_web",
		"--bundle-endpoint-cert", certFile, "--bundle-endpoint-key", keyFile, "--bundle-endpoint-refresh-hint", "1s")
	url := "https://" + epAddr + "/bundle.json"
	b, err := federation.FetchBundle(context.Background(), localTD, url, federation.WithWebPKIRoots(pool))
	if err != nil {
		t.Fatalf("FetchBundle: %v", err)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	roots, _ := ca.ParseCerts(rootPEM)
	if !ca.SameRoots(b.X509Authorities(), roots) {
		t.Fatal("the endpoint does not serve root-cert.pem's roots")
	}
	strictDocument(t, url, &tls.Config{RootCAs: pool})
	// The system roots do not know the test CA: Web PKI is checked.
	if _, err := federation.FetchBundle(context.Background(), localTD, url, federation.WithWebPKIRoots(x509.NewCertPool())); err == nil {
		t.Error("FetchBundle trusted the endpoint without its CA")
	}
}

// TestFederationEndpointFlagsChecked: inconsistent endpoint flags are
// usage errors that name the fix.
func TestFederationEndpointFlagsChecked(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'http://x/', bundleEndpointProfile: {type: https_web}}]"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--bundle-endpoint-listen", "127.0.0.1:0", "--bundle-endpoint-profile", "https_web"}, "needs --bundle-endpoint-cert and --bundle-endpoint-key"},
		{[]string{"--bundle-endpoint-listen", "127.0.0.1:0", "--bundle-endpoint-profile", "http"}, `"http": want https_spiffe or https_web`},
		{[]string{"--bundle-endpoint-cert", "x.pem"}, "need --bundle-endpoint-listen"},
		{[]string{"--bundle-endpoint-listen", "127.0.0.1:0", "--bundle-endpoint-cert", "x.pem", "--bundle-endpoint-key", "k.pem"}, "https_spiffe presents warden's own SVID"},
		{[]string{"--federation-file", filepath.Join(dir, "none.yaml")}, "--federation-file: federation: open "},
		{[]string{"--federation-file", bad}, `--federation-file: federation: ` + bad + `: trustDomains[0]: bundleEndpointURL: "http://x/": a bundle endpoint URL is https`},
		// Kubernetes mode reads the same file, checked before the cluster is asked.
		{[]string{"--federation-file", bad, "--kubernetes"}, `--federation-file: federation: ` + bad + `: trustDomains[0]: bundleEndpointURL: "http://x/": a bundle endpoint URL is https`},
		{[]string{"--federation-min-refresh", "0s"}, "--federation-min-refresh must be from 1s to 1h"},
	} {
		code, _, errOut := run(t, append([]string{"serve", "--data-dir", filepath.Join(dir, "d"), "--listen", "127.0.0.1:0", "--http-listen", ""}, c.args...)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}
