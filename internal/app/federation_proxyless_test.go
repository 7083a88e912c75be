package app_test

import (
	"crypto/x509"
	"fmt"
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

// demoChild runs 'warden demo server' in a process of its own (grpc-go
// reads GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE once, when it starts) with env
// added, and returns once it serves.
func demoChild(t *testing.T, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), env...), crashChildEnv+"="+strings.Join(append([]string{"demo", "server"}, args...), "\x1f"))
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "serving mode SERVING"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("demo server %v never served:\n%s", args, out.String())
		}
	}
}

// TestFederationProxylessBundleMap: a proxyless gRPC server of warden's
// trust domain ('warden demo server': grpc-go over xDS from warden, STRICT
// mTLS and RBAC from the xDS server listener, certificates and the SPIFFE
// bundle map from 'warden agent --output-dir') with
// GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true takes calls from a partner.test
// workload (its CA not warden's), each a new handshake, and an
// AuthorizationPolicy principal of the foreign trust domain works as
// written. A certificate for spiffe://cluster.local/ns/default/sa/sleep
// (a principal the policy allows) signed by partner.test's CA is refused
// by grpc-go's handshake. Without the variable grpc-go uses root-cert.pem
// alone and refuses the partner.test caller: the map is what federates.
func TestFederationProxylessBundleMap(t *testing.T) {
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
	_, port, _ := net.SplitHostPort(testkit.FreeAddr(t))
	_, plainPort, _ := net.SplitHostPort(testkit.FreeAddr(t))
	os.MkdirAll(mesh, 0o755)
	os.WriteFile(filepath.Join(mesh, "mesh.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: flaskapp-callers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [partner.test/ns/payments/sa/api, cluster.local/ns/default/sa/sleep]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaskapp, namespace: default}
spec:
  hosts: [flaskapp]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: `+port+`, name: grpc, protocol: GRPC}]
  endpoints:
  - {address: 127.0.0.3, labels: {app: flaskapp}, serviceAccount: flaskapp}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaskapp-plain, namespace: default}
spec:
  hosts: [flaskapp-plain]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: `+plainPort+`, name: grpc, protocol: GRPC}]
  endpoints:
  - {address: 127.0.0.5, labels: {app: flaskapp}, serviceAccount: flaskapp}
`), 0o644)
	addr := testkit.FreeAddr(t)
	serveAt(t, data, addr, "--config-dir", mesh, "--push-debounce", "20ms", "--federation-file", fedFile, "--federation-min-refresh", "1s")
	_, _, out := startAgent(t, dir, data, addr, "default", "flaskapp")
	testkit.Eventually(t, 15*time.Second, func() error {
		if m := bundleMap(t, out); len(m["partner.test"]) == 0 {
			return fmt.Errorf("the bundle map has no partner.test bundle: %d trust domains", len(m))
		}
		return nil
	})

	const node = "sidecar~127.0.0.3~flaskapp-v1.default~default.svc.cluster.local"
	demoChild(t, []string{"GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true"}, "--ca", addr, "--node", node, "--certs", out, "--listen", "127.0.0.3:"+port)
	demoChild(t, []string{"GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=false"}, "--ca", addr, "--node", "sidecar~127.0.0.5~flaskapp-v2.default~default.svc.cluster.local",
		"--certs", out, "--listen", "127.0.0.5:"+plainPort)

	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	local, _ := ca.ParseCerts(rootPEM)
	partnerSet := x509bundle.NewSet(x509bundle.FromX509Authorities(partnerTD, peer.m.Roots), x509bundle.FromX509Authorities(localTD, local))
	serverID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/flaskapp")
	svidOf := func(id string) *x509svid.SVID {
		c, k := peer.issue(t, spiffeid.RequireFromString(id))
		return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{c}, PrivateKey: k}
	}
	partner := svidOf("spiffe://partner.test/ns/payments/sa/api")
	for i := range 5 {
		got, err := call("127.0.0.3:"+port, tlsconfig.MTLSClientConfig(partner, partnerSet, tlsconfig.AuthorizeID(serverID)))
		if err != nil || got != partner.ID.String() {
			t.Fatalf("call %d partner.test → proxyless cluster.local: %q, %v", i, got, err)
		}
	}
	// RBAC still decides: a partner.test ID the policy does not name.
	if _, err := call("127.0.0.3:"+port, tlsconfig.MTLSClientConfig(svidOf("spiffe://partner.test/ns/payments/sa/other"), partnerSet, tlsconfig.AuthorizeID(serverID))); err == nil ||
		!strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("a partner.test ID no rule names: %v, want PermissionDenied by RBAC", err)
	}
	// Isolation, by grpc-go's own handshake.
	forged := svidOf("spiffe://cluster.local/ns/default/sa/sleep")
	if got, err := call("127.0.0.3:"+port, tlsconfig.MTLSClientConfig(forged, partnerSet, tlsconfig.AuthorizeID(serverID))); err == nil {
		t.Fatalf("the proxyless server accepted a foreign-signed %s (saw %s)", forged.ID, got)
	}
	// Without the bundle map (the variable off): local roots only.
	if _, err := call("127.0.0.5:"+plainPort, tlsconfig.MTLSClientConfig(partner, partnerSet, tlsconfig.AuthorizeID(serverID))); err == nil {
		t.Fatal("a proxyless server without the bundle map accepted a partner.test caller: the test shows nothing")
	}
	// policy explain says both: taken by the RBAC rule, with the note
	// that this depends on the variable.
	_, ex, _ := run(t, "policy", "explain", "-f", mesh, "--federation-file", fedFile, "--node", node, "--generator", "grpc", "--port", port,
		"--source-principal", partner.ID.String(), "--method", "POST", "--path", "/grpc.testing.TestService/UnaryCall")
	if !strings.HasPrefix(ex, "ALLOW") || !strings.Contains(ex, "note: the handshake takes "+partner.ID.String()+" only if the server runs with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true") {
		t.Errorf("policy explain for the partner.test caller:\n%s", ex)
	}
}
