package app_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/wardenmesh/warden/internal/app"
)

// authzTablePolicies exercise the authorization defects grpc-go's RBAC
// engine can express: several from entries ORed, namespace wildcards,
// values with notValues, a root-namespace selector, serviceAccounts,
// trustDomains, and a DENY/ALLOW/AUDIT mix.
const authzTablePolicies = `apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec: {peers: [{mtls: {}}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-callers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: DENY
  rules:
  - from: [{source: {namespaces: [evil, "test-*"]}}, {source: {principals: [cluster.local/ns/default/sa/banned]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-requests, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/grpc.testing.TestService/EmptyCall]}}]
    when: [{key: "request.headers[x-block]", values: ["yes"]}]
  - when: [{key: "request.headers[x-tenant]", values: ["a*"], notValues: [acme]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-root]", values: [deny]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: default}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-callers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  rules:
  - from: [{source: {namespaces: [default, "test-*", evil], trustDomains: [cluster.local]}}, {source: {serviceAccounts: [partner/app]}}]
    to: [{operation: {paths: ["/grpc.testing.TestService/*"]}}]
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {paths: [/grpc.testing.TestService/UnaryCall]}}]
    when: [{key: "request.headers[x-tenant]", values: [acme]}]
`

// TestGRPCDecidesAsExplain: a table of requests decided by grpc-go's own
// RBAC engine (an xDS-enabled gRPC server configured by warden serve),
// each checked against the stated outcome and against policy explain on
// the same files: the compiled filters mean the same to both evaluators.
func TestGRPCDecidesAsExplain(t *testing.T) {
	// One loader (internal/source) reads the directory for serve and for
	// policy explain: a hidden draft is skipped by both, and a policy
	// without a namespace lands in "default" for both.
	files := map[string]string{"policy.yaml": authzTablePolicies, ".draft.yaml": "not: [valid: yaml",
		"no-namespace.yaml": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-namespace}\nspec:\n  action: DENY\n  rules: [{when: [{key: \"request.headers[x-nons]\", values: [\"yes\"]}]}]\n"}
	m := startMesh(t, []string{"services.yaml", "routing.yaml"}, files,
		"default/flaskapp", "default/sleep", "default/banned", "evil/sleep", "test-1/sleep", "partner/app", "partner/other", "other/app", "evil/app")
	addr, port, certs, mesh := m.addr, m.port, m.certs, m.mesh
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	serverOut := demoServer(t, ctx, &wg, "--xds", addr, "--node", "sidecar~127.0.0.3~flaskapp-v2.default~default.svc.cluster.local",
		"--certs", certs["default/flaskapp"], "--listen", net.JoinHostPort("127.0.0.3", port), "--version", "v2")

	type call struct {
		id, rpc string
		headers []string
		allowed bool
	}
	table := []call{
		{"default/sleep", "unary", nil, true},
		{"default/sleep", "empty", nil, true},
		{"default/banned", "unary", nil, false},                                   // second from entry of the DENY
		{"evil/sleep", "unary", nil, false},                                       // first from entry
		{"test-1/sleep", "unary", nil, false},                                     // namespace wildcard
		{"partner/app", "unary", nil, true},                                       // serviceAccounts, second from entry of the ALLOW
		{"partner/app", "empty", nil, true},                                       //
		{"partner/other", "unary", nil, false},                                    // no ALLOW matches
		{"other/app", "unary", nil, false},                                        // needs x-tenant: acme
		{"other/app", "unary", []string{"x-tenant=acme"}, true},                   //
		{"other/app", "empty", []string{"x-tenant=acme"}, false},                  // that rule allows UnaryCall only
		{"default/sleep", "empty", []string{"x-block=yes"}, false},                // DENY path and header
		{"default/sleep", "unary", []string{"x-block=yes"}, true},                 // the header alone is not enough
		{"default/sleep", "unary", []string{"x-tenant=acme"}, true},               // notValues
		{"default/sleep", "unary", []string{"x-tenant=alpha"}, false},             // values a*
		{"default/sleep", "unary", []string{"x-tenant=beta"}, true},               //
		{"default/sleep", "unary", []string{"x-root=deny"}, false},                // root-namespace selector
		{"partner/app", "unary", []string{"x-root=deny"}, false},                  //
		{"default/sleep", "unary", []string{"x-root=allow"}, true},                //
		{"other/app", "unary", []string{"x-tenant=alpha"}, false},                 //
		{"default/banned", "empty", []string{"x-tenant=acme"}, false},             //
		{"evil/app", "unary", []string{"x-tenant=acme"}, false},                   //
		{"test-1/sleep", "empty", []string{"x-root=allow"}, false},                //
		{"partner/app", "empty", []string{"x-block=yes", "x-tenant=acme"}, false}, //
		{"default/sleep", "unary", []string{"x-nons=yes"}, false},                 // the policy without a namespace, in default
	}
	target := "xds:///flaskapp.default.svc.cluster.local:" + port
	for i, c := range table {
		ns, sa, _ := strings.Cut(c.id, "/")
		args := []string{"demo", "client", "--xds", addr, "--node", "sidecar~127.0.1." + strconv.Itoa(10+i) + "~" + sa + "." + ns + "~" + ns + ".svc.cluster.local",
			"--certs", certs[c.id], "--target", target, "-n", "1", "--rpc", c.rpc}
		explainArgs := []string{"policy", "explain", "-f", mesh, "--labels", "app=flaskapp,version=v2", "--port", port,
			"--source-principal", "spiffe://cluster.local/ns/" + ns + "/sa/" + sa, "--method", "POST",
			"--path", map[string]string{"unary": "/grpc.testing.TestService/UnaryCall", "empty": "/grpc.testing.TestService/EmptyCall"}[c.rpc]}
		for _, h := range c.headers {
			args = append(args, "--header", h)
			explainArgs = append(explainArgs, "--header", h)
		}
		var out, errOut syncBuffer
		app.Run(ctx, args, &out, &errOut)
		got := out.String()
		grpcAllowed := strings.Contains(got, "call 1: flaskapp")
		if !grpcAllowed && !strings.Contains(got, "call 1: PermissionDenied") {
			t.Fatalf("request %d (%+v): neither served nor refused by RBAC:\n%s%s\nserver:\n%s", i, c, got, errOut.String(), serverOut.String())
		}
		_, exp, stderr := run(t, explainArgs...)
		explainAllowed := strings.HasPrefix(exp, "ALLOW")
		if !explainAllowed && !strings.HasPrefix(exp, "DENY") {
			t.Fatalf("request %d: explain: %s%s", i, exp, stderr)
		}
		if grpcAllowed != c.allowed || explainAllowed != c.allowed {
			t.Errorf("request %d (%s %s %v): grpc-go allowed=%t, explain allowed=%t (%s), want %t\n%s", i, c.id, c.rpc, c.headers, grpcAllowed, explainAllowed, strings.TrimSpace(exp), c.allowed, got)
		}
	}
	t.Logf("%d requests decided alike by grpc-go's RBAC engine and policy explain", len(table))
}
