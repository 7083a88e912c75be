package app_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJWTRequestTable: requests with and without tokens, decided by
// policy explain, which runs the compiled jwt_authn (its requirement,
// issuers, audiences, expiry, CORS bypass, space-delimited claims and
// claim_to_headers) before the compiled RBAC filters.
func TestJWTRequestTable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  jwtRules:
  - issuer: https://a.example.com
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}'
    audiences: [flaskapp]
    outputClaimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  rules:
  - when: [{key: "request.auth.claims[scope]", values: [b]}]
  - to: [{operation: {methods: [OPTIONS]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-user]", values: [admin]}]}]
`), 0o644)
	past := fmt.Sprint(time.Now().Add(-time.Hour).Unix())
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no token: jwt_authn lets it through, authorization needs the scope", nil,
			"DENY: no ALLOW policy matches"},
		{"expired token", []string{"--jwt", "iss=https://a.example.com", "--jwt", "aud=flaskapp", "--jwt", "scope=b", "--jwt", "exp=" + past},
			"DENY: jwt_authn answers 401: Jwt is expired"},
		{"token from another issuer", []string{"--jwt", "iss=https://evil.example.com", "--jwt", "scope=b"},
			`DENY: jwt_authn answers 401: Jwt issuer "https://evil.example.com" is not configured`},
		{"wrong audience", []string{"--jwt", "iss=https://a.example.com", "--jwt", "aud=other", "--jwt", "scope=b"},
			"DENY: jwt_authn answers 401: Audiences in Jwt are not allowed"},
		{"scope \"a b\" is split, b matches", []string{"--jwt", "iss=https://a.example.com", "--jwt", "aud=flaskapp", "--jwt", "scope=a b", "--jwt", "sub=alice"},
			"ALLOW: allowed by ns[default]-policy[readers]-rule[0]"},
		{"scope \"ab\" is one value", []string{"--jwt", "iss=https://a.example.com", "--jwt", "aud=flaskapp", "--jwt", "scope=ab"},
			"DENY: no ALLOW policy matches"},
		{"CORS preflight with a bad token is not checked", []string{"--method", "OPTIONS", "--jwt", "iss=https://evil.example.com"},
			"ALLOW: allowed by ns[default]-policy[readers]-rule[1]"},
		{"a forged x-user is replaced by the token's claim", []string{"--header", "x-user=admin", "--jwt", "iss=https://a.example.com", "--jwt", "aud=flaskapp", "--jwt", "scope=b", "--jwt", "sub=alice"},
			"ALLOW: allowed by ns[default]-policy[readers]-rule[0]"},
		{"the token's own claim is denied", []string{"--jwt", "iss=https://a.example.com", "--jwt", "aud=flaskapp", "--jwt", "scope=b", "--jwt", "sub=admin"},
			"DENY: denied by ns[default]-policy[no-admin]-rule[0]"},
		{"without a token the header is the client's", []string{"--header", "x-user=admin", "--method", "OPTIONS"},
			"DENY: denied by ns[default]-policy[no-admin]-rule[0]"},
	}
	for _, c := range cases {
		args := append([]string{"policy", "explain", "-f", dir, "--labels", "app=flaskapp", "--path", "/api"}, c.args...)
		code, out, stderr := run(t, args...)
		if code != 0 || !strings.HasPrefix(out, c.want) {
			t.Errorf("%s: %d %q %s\nwant %q", c.name, code, out, stderr, c.want)
		}
	}

	// A legacy origin that is not optional: no token is a 401.
	legacy := t.TempDir()
	os.WriteFile(filepath.Join(legacy, "p.yaml"), []byte(`apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: default, namespace: default}
spec:
  origins: [{jwt: {issuer: https://a.example.com, jwksUri: https://a.example.com/jwks, triggerRules: [{excludedPaths: [{exact: /health}]}]}}]
`), 0o644)
	for path, want := range map[string]string{"/api": "DENY: jwt_authn answers 401: Jwt is missing", "/health": "ALLOW"} {
		_, out, _ := run(t, "policy", "explain", "-f", legacy, "--path", path)
		if !strings.HasPrefix(out, want) {
			t.Errorf("legacy origin, %s: %q, want %q", path, out, want)
		}
	}
}
