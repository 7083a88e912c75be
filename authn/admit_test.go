package authn_test

import (
	"slices"
	"testing"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// TestJWTFilterFields: the jwt_authn fields the request table relies on,
// read off the generated config one by one.
func TestJWTFilterFields(t *testing.T) {
	t.Parallel()
	objs, err := api.Decode([]byte(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  jwtRules:
  - issuer: https://a.example.com
    jwksUri: https://a.example.com/jwks
    audiences: [flaskapp]
    outputClaimToHeaders: [{header: x-user, claim: sub}]
    spaceDelimitedClaims: [roles]
    fromCookies: [session]
    timeout: 2s
`))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := authn.NewIndex(objs, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ix.Compile(authn.Workload{Namespace: "default", Ports: []authn.Port{{Number: 8080, Name: "http"}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := out.JWT
	p := cfg.Providers["origins-0"]
	switch {
	case !cfg.BypassCorsPreflight:
		t.Error("bypass_cors_preflight is off: a CORS preflight with a stale token would be refused")
	case p.PayloadInMetadata != "payload":
		t.Errorf("payload_in_metadata %q", p.PayloadInMetadata)
	case !slices.Equal(p.NormalizePayloadInMetadata.GetSpaceDelimitedClaims(), []string{"permission", "roles", "scope"}):
		t.Errorf("space_delimited_claims %v", p.NormalizePayloadInMetadata.GetSpaceDelimitedClaims())
	case len(p.ClaimToHeaders) != 1 || p.ClaimToHeaders[0].HeaderName != "x-user" || p.ClaimToHeaders[0].ClaimName != "sub":
		t.Errorf("claim_to_headers %v", p.ClaimToHeaders)
	case !slices.Equal(p.FromCookies, []string{"session"}):
		t.Errorf("from_cookies %v", p.FromCookies)
	case p.GetRemoteJwks().GetHttpUri().GetTimeout().AsDuration() != 2*time.Second:
		t.Errorf("timeout %v", p.GetRemoteJwks().GetHttpUri().GetTimeout())
	case !slices.Equal(p.Audiences, []string{"flaskapp"}):
		t.Errorf("audiences %v", p.Audiences)
	}
	now := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		claims   map[string]any
		method   string
		rejected string
		user     string
	}{
		{nil, "GET", "", "forged"},
		{map[string]any{"iss": "https://a.example.com", "aud": []any{"x", "flaskapp"}, "sub": "alice", "roles": "r1 r2"}, "GET", "", "alice"},
		{map[string]any{"iss": "https://a.example.com", "aud": "flaskapp", "exp": float64(now.Unix() - 1)}, "GET", "Jwt is expired", "forged"},
		{map[string]any{"iss": "https://a.example.com", "aud": "nope"}, "GET", "Audiences in Jwt are not allowed", "forged"},
		{map[string]any{"iss": "https://b.example.com"}, "GET", `Jwt issuer "https://b.example.com" is not configured`, "forged"},
		{map[string]any{"iss": "https://b.example.com"}, "OPTIONS", "", "forged"},
	} {
		a := out.Admit(c.claims, c.method, "/x", map[string]string{"x-user": "forged"}, now)
		if a.Rejected != c.rejected || a.Headers["x-user"] != c.user {
			t.Errorf("%v %s: rejected %q, x-user %q; want %q, %q", c.claims, c.method, a.Rejected, a.Headers["x-user"], c.rejected, c.user)
		}
		if c.user == "alice" && !slices.Equal(a.Payload["roles"].([]string), []string{"r1", "r2"}) {
			t.Errorf("roles not split: %v", a.Payload["roles"])
		}
	}
}
