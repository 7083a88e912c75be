package authn_test

import (
	"slices"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// TestDiscoveryIssuers: the issuers OIDC discovery fetches are those of
// the rules naming neither jwks nor jwksUri, from RequestAuthentications
// and legacy origins, each once.
func TestDiscoveryIssuers(t *testing.T) {
	t.Parallel()
	const jwks = `{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}`
	origin := func(iss, jwksURI string) api.OriginMethod {
		return api.OriginMethod{JWT: &api.JWT{Issuer: iss, JwksURI: jwksURI}}
	}
	objs := []api.Object{
		&api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "a", Namespace: "one"}, Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{
			{Issuer: "https://b.example.com"},
			{Issuer: "https://inline.example.com", Jwks: jwks},
			{Issuer: "https://remote.example.com", JwksURI: "https://remote.example.com/keys"},
		}}},
		&api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "b", Namespace: "two"}, Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{
			{Issuer: "https://a.example.com"}, {Issuer: "https://b.example.com"},
		}}},
		&api.Policy{Metadata: api.ObjectMeta{Name: "default", Namespace: "three"}, Spec: api.PolicySpec{Origins: []api.OriginMethod{
			origin("https://legacy.example.com", ""), origin("https://legacy-remote.example.com", "https://legacy-remote.example.com/keys"),
		}}},
		&api.MeshPolicy{Metadata: api.ObjectMeta{Name: "default"}, Spec: api.PolicySpec{Origins: []api.OriginMethod{origin("https://mesh.example.com", "")}}},
		&api.PeerAuthentication{Metadata: api.ObjectMeta{Name: "p", Namespace: "one"}},
	}
	ix, err := authn.NewIndex(objs, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://a.example.com", "https://b.example.com", "https://legacy.example.com", "https://mesh.example.com"}
	if got := ix.DiscoveryIssuers(); !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	ix, err = authn.NewIndex(nil, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ix.DiscoveryIssuers(); len(got) != 0 {
		t.Fatalf("no configuration: %q", got)
	}
}
