package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

var partnerTD = spiffeid.RequireTrustDomainFromString("partner.test")

// foreignPeer is a second trust domain that warden does not run: its CA
// made here, its bundle served by go-spiffe's federation.NewHandler over
// https_spiffe with an SVID of its own.
type foreignPeer struct {
	m    *ca.Material
	id   spiffeid.ID
	srv  *http.Server
	addr string
}

func startForeignPeer(t *testing.T, addr string) *foreignPeer {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := &foreignPeer{m: m, id: spiffeid.RequireFromString("spiffe://partner.test/bundle-server")}
	p.serve(t, addr)
	return p
}

func (p *foreignPeer) serve(t *testing.T, addr string) {
	t.Helper()
	p.serveRoots(t, addr, 1, p.m.Roots)
}

// serveRoots serves a bundle of roots at sequence seq, the endpoint's SVID
// still issued by the peer's CA.
func (p *foreignPeer) serveRoots(t *testing.T, addr string, seq uint64, roots []*x509.Certificate) {
	t.Helper()
	p.addr, p.srv = testkit.ServeBundleEndpoint(t, p.m, p.id, addr, seq, roots)
}

// publishNextRoot makes the peer's next root and serves it beside the
// current ones at sequence 2 (the first step of a rotation); it returns
// the new CA and the roots now served.
func (p *foreignPeer) publishNextRoot(t *testing.T) (*ca.Material, []*x509.Certificate) {
	t.Helper()
	next, err := ca.NewSelfSigned(ca.CAOptions{Organization: "partner.test", CommonName: "partner root 2", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	both := append(slices.Clone(p.m.Roots), next.Roots...)
	p.srv.Close()
	p.serveRoots(t, p.addr, 2, both)
	return next, both
}

// forge signs a leaf for id with the peer's CA key, whatever id's trust
// domain: what a compromised or malicious foreign trust domain can do.
func (p *foreignPeer) forge(t *testing.T, id spiffeid.ID) *x509.Certificate {
	t.Helper()
	c, _ := p.issue(t, id)
	return c
}

// issue is forge with the leaf's key: an X509-SVID of the foreign CA.
func (p *foreignPeer) issue(t *testing.T, id spiffeid.ID) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id.String())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.m.Cert, &key.PublicKey, p.m.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// sdsBundles opens an SDS stream on serve's CA port as ns/sa (a token
// minted from the data directory), asks for names and returns each
// validation context's roots by name; err is the stream's error.
func sdsBundles(t *testing.T, addr, data, ns, sa string, names ...string) (map[string][]*x509.Certificate, error) {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", ns, "--sa", sa)
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(tok)), 10*time.Second)
	defer cancel()
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{ResourceNames: names, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return validationRoots(t, resp), nil
}

// validationRoots are the roots of each validation context (a bundle)
// an SDS response carries, by secret name.
func validationRoots(t *testing.T, resp *discovery.DiscoveryResponse) map[string][]*x509.Certificate {
	t.Helper()
	out := map[string][]*x509.Certificate{}
	for _, a := range resp.Resources {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		if vc := sec.GetValidationContext(); vc != nil {
			certs, err := ca.ParseCerts(vc.GetTrustedCa().GetInlineBytes())
			if err != nil {
				t.Fatal(err)
			}
			out[sec.Name] = certs
		}
	}
	return out
}

// TestFederationStandaloneSDS: serve --federation-file fetches a foreign
// trust domain's bundle from a peer that is not warden (https_spiffe,
// bootstrapped from a PEM file), stores it in the data directory (0600),
// and its central SDS hands it to the namespace that federates, under
// "spiffe://partner.test", while ROOTCA stays the local roots; another
// namespace is refused it. Isolation: a certificate for
// spiffe://cluster.local/ns/default/sa/x signed by the foreign CA is
// refused by go-spiffe's x509svid.Verify with the bundles SDS handed out,
// and accepted by a flat pool of the same roots (Istio's ROOTCA with
// caCertificates merged). A restart while the peer is down still serves
// the stored bundle.
func TestFederationStandaloneSDS(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	peer := startForeignPeer(t, "127.0.0.1:0")
	os.WriteFile(filepath.Join(dir, "partner.pem"), ca.EncodeCerts(peer.m.Roots...), 0o600)
	fedFile := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fedFile, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://`+peer.addr+`/bundle
  bundleEndpointProfile:
    type: https_spiffe
    endpointSPIFFEID: spiffe://partner.test/bundle-server
  trustDomainBundleFile: partner.pem
  namespaces: [default]
`), 0o600)
	addr := testkit.FreeAddr(t)
	httpAddr := testkit.FreeAddr(t)
	_, stop := serveAt(t, data, addr, "--federation-file", fedFile, "--federation-min-refresh", "1s", "--http-listen", httpAddr)
	stored := filepath.Join(data, "federation", "partner.test.json")
	testkit.Eventually(t, 10*time.Second, func() error {
		fi, err := os.Stat(stored)
		if err == nil && fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %v", stored, fi.Mode().Perm())
		}
		return err
	})
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	local, _ := ca.ParseCerts(rootPEM)

	got, err := sdsBundles(t, addr, data, "default", "sleep", "default", "ROOTCA", "spiffe://partner.test", "spiffe://cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.SameRoots(got["ROOTCA"], local) || !ca.SameRoots(got["spiffe://cluster.local"], local) {
		t.Fatalf("ROOTCA holds %d roots: not the local bundle alone", len(got["ROOTCA"]))
	}
	if !ca.SameRoots(got["spiffe://partner.test"], peer.m.Roots) {
		t.Fatalf("spiffe://partner.test holds %d roots: not the peer's", len(got["spiffe://partner.test"]))
	}
	if _, err := sdsBundles(t, addr, data, "other", "sleep", "default", "spiffe://partner.test"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("namespace other asked for partner.test's bundle: %v, want PermissionDenied", err)
	}

	code, out, _ := run(t, "check", "--data-dir", data, "--server", httpAddr)
	if !strings.Contains(out, "partner.test: the bundle of sequence 1 (1 roots, fetched), fetched ") {
		t.Errorf("check with the peer up (exit %d):\n%s", code, out)
	}

	// Isolation.
	forged := peer.forge(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/x"))
	legit := peer.forge(t, spiffeid.RequireFromString("spiffe://partner.test/ns/default/sa/y"))
	set := x509bundle.NewSet(x509bundle.FromX509Authorities(localTD, got["ROOTCA"]), x509bundle.FromX509Authorities(partnerTD, got["spiffe://partner.test"]))
	if _, _, err := x509svid.Verify([]*x509.Certificate{forged}, set); err == nil {
		t.Fatal("the bundles warden hands out accept a local identity signed by the foreign CA")
	}
	if id, _, err := x509svid.Verify([]*x509.Certificate{legit}, set); err != nil || id.TrustDomain() != partnerTD {
		t.Fatalf("a partner.test SVID: %v", err)
	}
	flat := x509.NewCertPool()
	for _, r := range append(got["ROOTCA"], got["spiffe://partner.test"]...) {
		flat.AddCert(r)
	}
	if _, err := forged.Verify(x509.VerifyOptions{Roots: flat, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("a flat pool refused the forged certificate (the comparison shows nothing): %v", err)
	}
	merged := x509bundle.NewSet(x509bundle.FromX509Authorities(localTD, append(got["ROOTCA"], got["spiffe://partner.test"]...)))
	if _, _, err := x509svid.Verify([]*x509.Certificate{forged}, merged); err != nil {
		t.Fatalf("a merged local bundle refused the forged certificate: %v", err)
	}
	t.Log("a foreign-signed spiffe://cluster.local/ns/default/sa/x: refused by warden's bundles, accepted by a flat pool")

	// Restart with the peer gone: the stored bundle is served.
	stop()
	peer.srv.Close()
	serveAt(t, data, addr, "--federation-file", fedFile, "--federation-min-refresh", "1s", "--http-listen", httpAddr)
	got, err = sdsBundles(t, addr, data, "default", "sleep", "default", "spiffe://partner.test")
	if err != nil {
		t.Fatal(err)
	}
	if !ca.SameRoots(got["spiffe://partner.test"], peer.m.Roots) {
		t.Fatal("after a restart without the peer, spiffe://partner.test is not the stored bundle")
	}
	// Down for more than three refresh intervals (1 s): warden check
	// reports the stale relationship and fails; the bundle is still
	// served.
	testkit.Eventually(t, 15*time.Second, func() error {
		code, out, _ := run(t, "check", "--data-dir", data, "--server", httpAddr)
		if code == 0 || !strings.Contains(out, "ERROR") || !strings.Contains(out, "partner.test: stale relationship: no good fetch since ") ||
			!strings.Contains(out, "workloads still use the bundle of sequence 1 (1 roots, stored)") {
			return fmt.Errorf("check exit %d:\n%s", code, out)
		}
		return nil
	})
	if got, err = sdsBundles(t, addr, data, "default", "sleep", "default", "spiffe://partner.test"); err != nil || len(got["spiffe://partner.test"]) != 1 {
		t.Fatalf("the stale bundle is no longer served: %v", err)
	}
}
