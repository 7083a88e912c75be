package app_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestFederationIstioCACertificates: a relationships file in Istio's
// meshConfig.caCertificates form (spiffeBundleUrl, trustDomains, and
// warden's namespaces) drives an https_web fetch authenticated by the
// system's roots, as Istio fetches spiffeBundleUrl: serve runs in a
// process of its own whose system roots (SSL_CERT_FILE) hold the test
// server's CA. The bundle is stored and handed to the namespace listed
// alone, under spiffe://partner.test, with ROOTCA still the local roots.
func TestFederationIstioCACertificates(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := spiffebundle.FromX509Authorities(partnerTD, m.Roots).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	web := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/spiffe-bundle" {
			http.NotFound(w, r)
			return
		}
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	}))
	t.Cleanup(web.Close)
	roots := filepath.Join(dir, "system-roots.pem")
	if err := os.WriteFile(roots, ca.EncodeCerts(web.Certificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	fedFile := filepath.Join(dir, "federation.yaml")
	if err := os.WriteFile(fedFile, []byte(`caCertificates:
- spiffeBundleUrl: `+strings.TrimPrefix(web.URL, "https://")+`/.well-known/spiffe-bundle
  trustDomains: [partner.test]
  namespaces: [default]
`), 0o600); err != nil {
		t.Fatal(err)
	}

	addr := testkit.FreeAddr(t)
	args := []string{"serve", "--data-dir", data, "--listen", addr, "--http-listen", "", "--federation-file", fedFile, "--federation-min-refresh", "1s"}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+roots, crashChildEnv+"="+strings.Join(args, "\x1f"))
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testkit.Eventually(t, 20*time.Second, func() error {
		if err := testkit.Serving(addr); err != nil {
			return fmt.Errorf("%w\nserve:\n%s", err, out.String())
		}
		return nil
	})

	stored := filepath.Join(data, "federation", "partner.test.json")
	testkit.Eventually(t, 10*time.Second, func() error { _, err := os.Stat(stored); return err })
	if fetches.Load() == 0 {
		t.Fatal("a bundle is stored but the endpoint was never fetched")
	}
	raw, err := os.ReadFile(stored)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := spiffebundle.Parse(partnerTD, raw); err != nil || !ca.SameRoots(b.X509Authorities(), m.Roots) {
		t.Fatalf("the stored bundle is not the endpoint's (%v):\n%s", err, raw)
	}

	got, err := sdsBundles(t, addr, data, "default", "sleep", "ROOTCA", "spiffe://partner.test")
	if err != nil {
		t.Fatalf("%v\nserve:\n%s", err, out.String())
	}
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	local, _ := ca.ParseCerts(rootPEM)
	if !ca.SameRoots(got["ROOTCA"], local) {
		t.Fatal("ROOTCA is not the local roots alone: the foreign bundle was merged")
	}
	if !ca.SameRoots(got["spiffe://partner.test"], m.Roots) {
		t.Fatalf("spiffe://partner.test holds %d roots: not the endpoint's", len(got["spiffe://partner.test"]))
	}
	if _, err := sdsBundles(t, addr, data, "other", "sleep", "spiffe://partner.test"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("namespace other (not in namespaces) asked for partner.test's bundle: %v, want PermissionDenied", err)
	}
}
