package app_test

import (
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// demoClient runs 'warden demo client' in a process of its own (grpc-go
// reads GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE when it starts) and returns
// its output.
func demoClient(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), env...), crashChildEnv+"="+strings.Join(append([]string{"demo", "client"}, args...), "\x1f"))
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// TestFederationProxylessCallsForeignService: a proxyless gRPC client of
// warden's trust domain ('warden demo client' over warden's xDS, its
// certificates and SPIFFE bundle map from 'warden agent --output-dir')
// calls a partner.test server through a ServiceEntry whose
// subjectAltNames name the server's SPIFFE ID: the handshake succeeds,
// both ways across trust domains. A partner.test server presenting
// another ID of its trust domain is refused by the cluster's SAN match.
func TestFederationProxylessCallsForeignService(t *testing.T) {
	dir := t.TempDir()
	data, mesh := filepath.Join(dir, "data"), filepath.Join(dir, "mesh")
	peer := startForeignPeer(t, "127.0.0.1:0")
	os.WriteFile(filepath.Join(dir, "partner.pem"), ca.EncodeCerts(peer.m.Roots...), 0o600)
	fedFile := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fedFile, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://`+peer.addr+`/bundle
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: "spiffe://partner.test/bundle-server"}
  trustDomainBundleFile: partner.pem
  namespaces: [default]
`), 0o600)
	os.MkdirAll(mesh, 0o755)
	addr := testkit.FreeAddr(t)
	serveAt(t, data, addr, "--federation-file", fedFile, "--federation-min-refresh", "1s", "--config-dir", mesh, "--push-debounce", "20ms")
	rootPEM, err := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	local, _ := ca.ParseCerts(rootPEM)
	localSet := x509bundle.NewSet(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("cluster.local"), local))

	// Two partner.test servers: the one the entry names, and another.
	server := func(id string) string {
		c, k := peer.issue(t, spiffeid.RequireFromString(id))
		svid := &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{c}, PrivateKey: k}
		a, _ := grpcServe(t, tlsconfig.MTLSServerConfig(svid, localSet, tlsconfig.AuthorizeAny()))
		_, port, _ := net.SplitHostPort(a)
		return port
	}
	apiPort, otherPort := server("spiffe://partner.test/ns/api/sa/api"), server("spiffe://partner.test/ns/api/sa/other")
	entry := func(name, port string) string {
		return `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + name + `, namespace: default}
spec:
  hosts: [` + name + `.partner.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: ` + port + `, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1}]
  subjectAltNames: ["spiffe://partner.test/ns/api/sa/api"]
---
`
	}
	os.WriteFile(filepath.Join(mesh, "mesh.yaml"), []byte(entry("api", apiPort)+entry("impostor", otherPort)+`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9999, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.9, serviceAccount: sleep}]
`), 0o644)
	_, _, out := startAgent(t, dir, data, addr, "default", "sleep")
	testkit.Eventually(t, 15*time.Second, func() error {
		if m := bundleMap(t, out); len(m["partner.test"]) == 0 {
			return os.ErrNotExist
		}
		return nil
	})

	env := []string{"GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true"}
	const node = "sidecar~127.0.0.9~sleep-1.default~default.svc.cluster.local"
	got := demoClient(t, env, "--ca", addr, "--node", node, "--certs", out, "--target", "xds:///api.partner.test:"+apiPort, "-n", "2")
	if !strings.Contains(got, "call 2: flaskapp  (mTLS to spiffe://partner.test/ns/api/sa/api; server saw spiffe://cluster.local/ns/default/sa/sleep)") {
		t.Fatalf("calling the partner.test server the ServiceEntry names:\n%s", got)
	}
	got = demoClient(t, env, "--ca", addr, "--node", node, "--certs", out, "--target", "xds:///impostor.partner.test:"+otherPort, "-n", "1", "--new-conn")
	if !strings.Contains(got, "do not match any of the accepted SANs") || strings.Contains(got, "mTLS to") {
		t.Fatalf("a partner.test server with an ID the ServiceEntry does not name was not refused:\n%s", got)
	}
}
