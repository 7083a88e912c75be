package app_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyExplainFederation: policy explain answers for a caller of a
// federated trust domain what the proxy does: the handshake of a
// namespace that federates with partner.test takes its peers (Envoy's
// SPIFFE validator lists the trust domain) and the policy decides, as
// written (a trust domain alias rewrites no foreign principal); the
// handshake of any other namespace, or without --federation-file, refuses
// them before any policy runs. The same for a proxyless gRPC server,
// whose answer notes the grpc-go environment it depends on.
func TestPolicyExplainFederation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy")
	os.MkdirAll(pol, 0o755)
	os.WriteFile(filepath.Join(pol, "p.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partners, namespace: istio-system}
spec:
  rules:
  - from: [{source: {principals: [partner.test/ns/shop/sa/client]}}]
  - from: [{source: {trustDomains: [partner.test]}}]
    to: [{operation: {paths: [/public]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.3, labels: {app: api}, serviceAccount: api}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: other}
spec:
  hosts: [api.other]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9000, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.4, labels: {app: api}, serviceAccount: api}]
`), 0o644)
	fed := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fed, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://bundles.partner.test/
  bundleEndpointProfile: {type: https_web}
  namespaces: [default]
`), 0o600)
	explain := func(args ...string) string {
		t.Helper()
		_, out, stderr := run(t, append([]string{"policy", "explain", "-f", pol, "--trust-domain", "mesh.test", "--method", "GET"}, args...)...)
		return out + stderr
	}
	const client = "spiffe://partner.test/ns/shop/sa/client"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"federating namespace", []string{"--federation-file", fed, "--source-principal", client, "--path", "/x"}, "ALLOW: allowed by ns[istio-system]-policy[partners]-rule[0]"},
		{"with an alias", []string{"--federation-file", fed, "--trust-domain-alias", "old.test", "--source-principal", client, "--path", "/x"}, "ALLOW: allowed by ns[istio-system]-policy[partners]-rule[0]"},
		{"local caller of the same name", []string{"--federation-file", fed, "--trust-domain-alias", "old.test", "--source-principal", "spiffe://old.test/ns/shop/sa/client", "--path", "/x"}, "DENY: no ALLOW policy matches"},
		{"trust domain", []string{"--federation-file", fed, "--source-principal", "spiffe://partner.test/ns/x/sa/y", "--path", "/public"}, "ALLOW: allowed by ns[istio-system]-policy[partners]-rule[1]"},
		{"other namespace", []string{"--federation-file", fed, "--namespace", "other", "--source-principal", client, "--path", "/x"},
			"DENY: the handshake refuses spiffe://partner.test/ns/shop/sa/client: this proxy validates peers with ROOTCA, the bundle of mesh.test alone, and trust domain partner.test is not federated with the workload's namespace (name it in the federation relationship's namespaces)"},
		{"no federation file", []string{"--source-principal", client, "--path", "/x"}, "DENY: the handshake refuses"},
		{"not a SPIFFE ID", []string{"--federation-file", fed, "--source-principal", "partner.test/ns/shop/sa/client", "--path", "/x"},
			`DENY: the handshake refuses "partner.test/ns/shop/sa/client": the proxy validates mesh peers, whose certificates carry a SPIFFE ID, and this is none`},
		{"unfederated trust domain", []string{"--federation-file", fed, "--source-principal", "spiffe://elsewhere.test/ns/shop/sa/client", "--path", "/public"},
			"DENY: the handshake refuses spiffe://elsewhere.test/ns/shop/sa/client: the proxy's SPIFFE validator has no bundle for trust domain elsewhere.test"},
	}
	for _, tc := range cases {
		if out := explain(tc.args...); !strings.HasPrefix(out, tc.want) {
			t.Errorf("%s: %s\nwant prefix %s", tc.name, out, tc.want)
		}
	}

	// A proxyless gRPC server's roots are its certificate provider's
	// files: the bundle map of its namespace's relationships when grpc-go
	// runs with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true (which explain
	// cannot see, so it says so), ROOTCA alone otherwise.
	// TestFederationProxylessBundleMap shows both with real handshakes.
	const server, otherServer = "sidecar~127.0.0.3~api-1.default~default.svc.cluster.local", "sidecar~127.0.0.4~api-1.other~other.svc.cluster.local"
	proxyless := []struct {
		name       string
		args       []string
		want, note string
	}{
		{"proxyless, federating namespace", []string{"--federation-file", fed, "--node", server, "--source-principal", client},
			"ALLOW: allowed by ns[istio-system]-policy[partners]-rule[0]", "note: the handshake takes spiffe://partner.test/ns/shop/sa/client only if the server runs with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true"},
		{"proxyless, other namespace", []string{"--federation-file", fed, "--node", otherServer, "--source-principal", client},
			"DENY: the handshake refuses spiffe://partner.test/ns/shop/sa/client: a proxyless gRPC server validates peers with ROOTCA, the bundle of mesh.test alone, or with the bundle map of its namespace's federation relationships, and trust domain partner.test is in neither", ""},
		{"proxyless, unfederated trust domain", []string{"--federation-file", fed, "--node", server, "--source-principal", "spiffe://elsewhere.test/ns/shop/sa/client", "--path", "/public"},
			"DENY: the handshake refuses spiffe://elsewhere.test/ns/shop/sa/client: a proxyless gRPC server", ""},
		{"proxyless, alias", []string{"--federation-file", fed, "--trust-domain-alias", "old.test", "--node", server, "--source-principal", "spiffe://old.test/ns/shop/sa/client"},
			"DENY: no ALLOW policy matches", "note: the handshake takes spiffe://old.test/ns/shop/sa/client with the server's ca_certificate_file (ROOTCA); a server running with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true looks trust domain old.test up in the bundle map, which names no alias"},
		{"proxyless, local", []string{"--federation-file", fed, "--node", server, "--source-principal", "spiffe://mesh.test/ns/shop/sa/client"}, "DENY: no ALLOW policy matches", ""},
	}
	for _, tc := range proxyless {
		out := explain(append(tc.args, "--generator", "grpc", "--path", "/x")...)
		if !strings.HasPrefix(out, tc.want) {
			t.Errorf("%s: %s\nwant prefix %s", tc.name, out, tc.want)
		}
		if tc.note != "" && !strings.Contains(out, tc.note) || tc.note == "" && strings.Contains(out, "note:") {
			t.Errorf("%s: %s\nwant note %q", tc.name, out, tc.note)
		}
	}
}

// TestPolicyCheckFederatedTrustDomains: policy check and check warn (not
// fail) about a policy naming a trust domain that is neither the
// mesh's, an alias nor federated: it can never match.
func TestPolicyCheckFederatedTrustDomains(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy")
	os.MkdirAll(pol, 0o755)
	os.WriteFile(filepath.Join(pol, "p.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partners, namespace: default}
spec:
  rules:
  - from: [{source: {principals: [partner.test/ns/shop/sa/client, partner.tset/ns/shop/sa/client]}}]
`), 0o644)
	fed := filepath.Join(dir, "federation.yaml")
	os.WriteFile(fed, []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://bundles.partner.test/
  bundleEndpointProfile: {type: https_web}
  namespaces: [default]
`), 0o600)
	finding := func(td string) string {
		return `AuthorizationPolicy default/partners rule 0: source.principals: "` + td + `/ns/shop/sa/client" names trust domain "` + td + `", which is neither the mesh's (cluster.local), an alias, nor a federated trust domain`
	}
	code, out, stderr := run(t, "policy", "check", "-f", pol, "--federation-file", fed)
	if code != 0 || !strings.Contains(out, "authz: "+finding("partner.tset")) || strings.Contains(out, finding("partner.test")) {
		t.Errorf("policy check with the federation file: %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := run(t, "policy", "check", "-f", pol, "--federation-file", fed, "--strict"); code != 1 {
		t.Errorf("policy check --strict: %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := run(t, "policy", "check", "-f", pol); code != 0 || !strings.Contains(out, finding("partner.test")) {
		t.Errorf("policy check without the federation file: %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = run(t, "check", "--data-dir", filepath.Join(dir, "none"), "--config-dir", pol, "--federation-file", fed)
	if !strings.Contains(out, finding("partner.tset")) || strings.Contains(out, finding("partner.test")) {
		t.Errorf("check: %d\n%s%s", code, out, stderr)
	}
}
