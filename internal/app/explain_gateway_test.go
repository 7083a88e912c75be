package app_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// gatewayPolicyMesh is an ingress gateway (istio=ingressgateway, in
// istio-system at 10.0.9.1) with an HTTP, an HTTPS, a TCP and a
// TLS-terminated TCP server, and a sidecar workload (app=web), both
// selected by the same policies: ALLOW only clients in 203.0.113.0/24
// (remoteIpBlocks), DENY /admin*, and a JWT issuer.
const gatewayPolicyMesh = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  hosts: [istio-ingressgateway]
  resolution: STATIC
  ports: [{number: 80, name: http2}]
  endpoints: [{address: 10.0.9.1, labels: {istio: ingressgateway}, serviceAccount: ingress}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: istio-system}
spec:
  hosts: [web]
  addresses: [10.96.0.9]
  resolution: STATIC
  ports: [{number: 8080, name: http}, {number: 9000, name: tcp}]
  endpoints: [{address: 10.0.0.9, labels: {app: web}, serviceAccount: web}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9444, name: tls-db, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: SIMPLE, credentialName: db-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - route: [{destination: {host: web, port: {number: 8080}}}]
  tcp:
  - route: [{destination: {host: web, port: {number: 9000}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: clients, namespace: istio-system}
spec:
  action: ALLOW
  rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: issuer, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://issuer.example.com", jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}'}]
`

// noAdmin is an HTTP-only DENY: on a TCP server, as in Istio, it denies
// every connection (a DENY rule whose HTTP fields cannot be checked is
// not narrowed). tcpDeny is a DENY of clients in 198.51.100.0/24.
const noAdmin = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`

const tcpDeny = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-test-net, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["198.51.100.0/24"]}}]}]
`

// TestExplainGatewayListeners: policy explain evaluates a gateway's own
// server listeners (HTTP, HTTPS by SNI, TCP, TLS-terminated), and the
// same decision table on a sidecar's inbound listener. The rows differ
// only where the listeners do: a gateway takes the client address from
// the connection (use_remote_address), a sidecar from X-Forwarded-For;
// with --gateway-num-trusted-proxies 1 the gateway trusts one hop.
func TestExplainGatewayListeners(t *testing.T) {
	t.Parallel()
	dirs := map[string]string{}
	for name, policy := range map[string]string{"http": noAdmin, "tcp": tcpDeny} {
		dirs[name] = t.TempDir()
		if err := os.WriteFile(filepath.Join(dirs[name], "mesh.yaml"), []byte(gatewayPolicyMesh+"---\n"+policy), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	inside, outside, testNet := "203.0.113.7", "10.1.1.1", "198.51.100.7"
	gateway := []string{"--gateway", "--namespace", "istio-system", "--labels", "istio=ingressgateway"}
	node := []string{"--node", "router~10.0.9.1~ingress-1.istio-system~istio-system.svc.cluster.local"}
	sidecar := []string{"--namespace", "istio-system", "--labels", "app=web", "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep"}
	for _, c := range []struct {
		name, dir      string
		args           []string
		gateway, sidec string // decision prefixes; "" where the row is not for that proxy
	}{
		{"client allowed", "http", []string{"--port", "80", "--source-ip", inside}, "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]", "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]"},
		{"admin denied", "http", []string{"--port", "80", "--source-ip", inside, "--path", "/admin/users"}, "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]", "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]"},
		{"path normalized before DENY", "http", []string{"--port", "80", "--source-ip", inside, "--path", "/./admin"}, "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]", "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]"},
		{"client outside", "http", []string{"--port", "80", "--source-ip", outside}, "DENY: no ALLOW policy matches", "DENY: no ALLOW policy matches"},
		// A forged X-Forwarded-For: the gateway is the edge and takes the
		// connection's address; the sidecar trusts the last hop.
		{"forwarded-for", "http", []string{"--port", "80", "--source-ip", outside, "--header", "x-forwarded-for=" + inside}, "DENY: no ALLOW policy matches", "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]"},
		{"forwarded-for, one trusted hop", "http", []string{"--port", "80", "--source-ip", outside, "--header", "x-forwarded-for=" + inside, "--gateway-num-trusted-proxies", "1"}, "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]", ""},
		{"jwt of another issuer", "http", []string{"--port", "80", "--source-ip", inside, "--jwt", "iss=https://other.example.com"}, "DENY: jwt_authn answers 401: Jwt issuer \"https://other.example.com\" is not configured", "DENY: jwt_authn answers 401: Jwt issuer \"https://other.example.com\" is not configured"},
		{"https admin", "http", []string{"--port", "443", "--sni", "web.example.com", "--source-ip", inside, "--path", "/admin"}, "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]", ""},
		{"https unknown sni", "http", []string{"--port", "443", "--sni", "other.example.com", "--source-ip", inside}, "DENY: no server of the gateway on port 443 takes SNI \"other.example.com\"", ""},
		{"tcp inside", "tcp", []string{"--port", "31400", "--source-ip", inside}, "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]", ""},
		{"tcp outside", "tcp", []string{"--port", "31400", "--source-ip", outside}, "DENY: no ALLOW policy matches", ""},
		{"tls-terminated outside", "tcp", []string{"--port", "9444", "--sni", "db.example.com", "--source-ip", outside}, "DENY: no ALLOW policy matches", ""},
		{"tls-terminated inside", "tcp", []string{"--port", "9444", "--sni", "db.example.com", "--source-ip", inside}, "ALLOW: allowed by ns[istio-system]-policy[clients]-rule[0]", ""},
		{"sidecar tcp outside", "tcp", []string{"--port", "tcp:9000", "--tcp", "--source-ip", outside}, "", "DENY: no ALLOW policy matches"},
		{"tcp from the denied network", "tcp", []string{"--port", "31400", "--source-ip", testNet}, "DENY: denied by ns[istio-system]-policy[no-test-net]-rule[0]", ""},
		{"tls-terminated from the denied network", "tcp", []string{"--port", "9444", "--sni", "db.example.com", "--source-ip", testNet}, "DENY: denied by ns[istio-system]-policy[no-test-net]-rule[0]", ""},
		// Istio's meaning: a DENY rule with HTTP-only fields denies every
		// TCP connection rather than none.
		{"http-only DENY on tcp", "http", []string{"--port", "31400", "--source-ip", inside}, "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]", ""},
		{"http-only DENY on sidecar tcp", "http", []string{"--port", "tcp:9000", "--tcp", "--source-ip", inside}, "", "DENY: denied by ns[istio-system]-policy[no-admin]-rule[0]"},
	} {
		explain := func(who []string) string {
			args := append(append([]string{"policy", "explain", "-f", dirs[c.dir]}, who...), c.args...)
			code, out, stderr := run(t, args...)
			if code != 0 {
				t.Fatalf("%s: %v: exit %d: %s", c.name, args, code, stderr)
			}
			return out
		}
		if c.gateway != "" {
			for _, who := range [][]string{gateway, node} {
				if out := explain(who); !strings.HasPrefix(out, c.gateway) || !strings.Contains(out, "evaluated: gateway") {
					t.Errorf("%s, %s: %q, want %q on a gateway listener", c.name, who[0], out, c.gateway)
				}
			}
		}
		if c.sidec != "" {
			if out := explain(sidecar); !strings.HasPrefix(out, c.sidec) || !strings.Contains(out, "evaluated: sidecar inbound") {
				t.Errorf("%s, sidecar: %q, want %q", c.name, out, c.sidec)
			}
		}
	}
}

// TestExplainExitCode: --exit-code makes DENY exit 3 for scripts, ALLOW 0;
// without it both exit 0.
func TestExplainExitCode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(gatewayPolicyMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"policy", "explain", "-f", dir, "--gateway", "--namespace", "istio-system", "--labels", "istio=ingressgateway", "--port", "80"}
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"--source-ip", "203.0.113.7", "--exit-code"}, 0},
		{[]string{"--source-ip", "10.1.1.1", "--exit-code"}, 3},
		{[]string{"--source-ip", "10.1.1.1"}, 0},
	} {
		if code, out, stderr := run(t, append(slices.Clone(base), c.args...)...); code != c.code || stderr != "" {
			t.Errorf("%v: exit %d (%q %q), want %d", c.args, code, out, stderr, c.code)
		}
	}
}
