package authn_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/internal/fieldwalk"
)

// Every field of every authentication kind is accounted for: set on its
// own to a valid value, it changes the compiled output (filter chains,
// jwt_authn, effective modes) or a report names it.

var authnSamples = map[string]any{
	"matchLabels":   map[string]string{"app": "other"},
	"PeerMTLS.mode": "DISABLE", "portLevelMtls": map[string]api.PeerMTLS{"8080": {Mode: "DISABLE"}},
	"PolicyTargetReference.group": "gateway.networking.k8s.io", "PolicyTargetReference.kind": "Gateway", "PolicyTargetReference.name": "gw",
	"PolicyTargetReference.namespace": "other",
	"issuer":                          "https://other.example.com", "audiences": []string{"other"},
	"jwksUri": "https://keys.example.com/jwks", "jwks": `{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}`,
	"JWTHeader.name": "x-token", "JWTHeader.prefix": "Token ",
	"fromParams": []string{"token"}, "fromCookies": []string{"session"},
	"outputPayloadToHeader": "x-payload", "ClaimToHeader.header": "x-user", "ClaimToHeader.claim": "sub",
	"forwardOriginalToken": true, "timeout": "9s", "spaceDelimitedClaims": []string{"roles"},
	// legacy
	"TargetSelector.name": "other", "TargetSelector.labels": map[string]string{"app": "other"},
	"AuthnPortSelector.number": uint32(9090), "AuthnPortSelector.name": "grpc",
	"allowTls": true, "MutualTLS.mode": "PERMISSIVE",
	"jwtHeaders": []string{"x-token"}, "jwtParams": []string{"token"},
	"AuthnStringMatch.exact": "/health", "AuthnStringMatch.prefix": "/public", "AuthnStringMatch.suffix": ".css", "AuthnStringMatch.regex": "/v[0-9]+",
	"peerIsOptional": true, "originIsOptional": true, "principalBinding": "USE_ORIGIN",
}

func authnSample(t *testing.T, l fieldwalk.Leaf) reflect.Value {
	t.Helper()
	s, ok := authnSamples[l.Owner.Name()+"."+l.Name]
	if !ok {
		s, ok = authnSamples[l.Name]
	}
	if !ok {
		t.Fatalf("no sample for %s.%s (%s): add one, and make the compiler read the field or report it", l.Owner.Name(), l.Name, l.Path)
	}
	v := reflect.ValueOf(s)
	if !v.Type().AssignableTo(l.Type) {
		t.Fatalf("sample for %s is %T, field is %s", l.Path, s, l.Type)
	}
	return v
}

func compiled(t *testing.T, objs []api.Object) (string, []string) {
	t.Helper()
	ix, err := authn.NewIndex(objs, authn.Options{})
	if err != nil {
		return "error: " + err.Error(), nil
	}
	out, err := ix.Compile(authn.Workload{Namespace: "default", Labels: map[string]string{"app": "flaskapp"},
		Ports: []authn.Port{{Number: 8080, Name: "http"}, {Number: 9090, Name: "grpc"}}, ServiceNames: []string{"flaskapp"}})
	if err != nil {
		return "error: " + err.Error(), nil
	}
	y, err := out.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return string(y), out.Settings.Conflicts
}

func accountAuthn(t *testing.T, kind string, spec any, build func(any) []api.Object) int {
	st := reflect.TypeOf(spec).Elem()
	baseY, baseR := compiled(t, build(spec))
	if strings.HasPrefix(baseY, "error:") {
		t.Fatalf("%s base: %s", kind, baseY)
	}
	n := 0
	for _, l := range fieldwalk.Leaves(st) {
		n++
		val := authnSample(t, l)
		c := reflect.New(st)
		b, _ := json.Marshal(spec)
		_ = json.Unmarshal(b, c.Interface())
		l.Set(c.Elem(), val)
		y, reports := compiled(t, build(c.Interface()))
		if y != baseY {
			continue
		}
		if slices.ContainsFunc(reports, func(r string) bool { return strings.Contains(r, l.Name) && !slices.Contains(baseR, r) }) {
			continue
		}
		t.Errorf("%s spec.%s: set to %v, neither the output nor a report changed", kind, l.Path, val)
	}
	return n
}

func TestEveryAuthenticationFieldIsAccounted(t *testing.T) {
	t.Parallel()
	n := accountAuthn(t, "PeerAuthentication", &api.PeerAuthenticationSpec{Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"app": "flaskapp"}}, MTLS: &api.PeerMTLS{Mode: "STRICT"}},
		func(s any) []api.Object {
			return []api.Object{&api.PeerAuthentication{Metadata: api.ObjectMeta{Name: "p", Namespace: "default"}, Spec: *s.(*api.PeerAuthenticationSpec)}}
		})
	ra := &api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: "https://a.example.com", JwksURI: "https://a.example.com/jwks",
		FromHeaders: []api.JWTHeader{{Name: "authorization", Prefix: "Bearer "}}, OutputClaimToHeaders: []api.ClaimToHeader{{Header: "x-iss", Claim: "iss"}}}}}
	n += accountAuthn(t, "RequestAuthentication", ra, func(s any) []api.Object {
		spec := *s.(*api.RequestAuthenticationSpec)
		if spec.JWTRules[0].Jwks != "" {
			spec.JWTRules[0].JwksURI = "" // one key source
		}
		return []api.Object{&api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "r", Namespace: "default"}, Spec: spec}}
	})
	legacy := &api.PolicySpec{
		Targets: []api.TargetSelector{{Name: "flaskapp", Ports: []api.AuthnPortSelector{{Number: 8080}}}},
		Peers:   []api.PeerMethod{{MTLS: &api.MutualTLS{}}},
		Origins: []api.OriginMethod{{JWT: &api.JWT{Issuer: "https://a.example.com", JwksURI: "https://a.example.com/jwks",
			TriggerRules: []api.JWTTriggerRule{{ExcludedPaths: []api.AuthnStringMatch{{Exact: "/x"}}}}}}},
	}
	n += accountAuthn(t, "Policy", legacy, func(s any) []api.Object {
		spec := *s.(*api.PolicySpec)
		fixLegacy(&spec)
		return []api.Object{&api.Policy{Metadata: api.ObjectMeta{Name: "targeted", Namespace: "default"}, Spec: spec}}
	})
	mesh := &api.PolicySpec{Peers: []api.PeerMethod{{MTLS: &api.MutualTLS{}}},
		Origins: []api.OriginMethod{{JWT: &api.JWT{Issuer: "https://a.example.com", JwksURI: "https://a.example.com/jwks"}}}}
	n += accountAuthn(t, "MeshPolicy", mesh, func(s any) []api.Object {
		spec := *s.(*api.PolicySpec)
		fixLegacy(&spec)
		return []api.Object{&api.MeshPolicy{Metadata: api.ObjectMeta{Name: "default"}, Spec: spec}}
	})
	t.Logf("%d fields accounted for", n)
}

// fixLegacy keeps a one-of valid after a sample was set: a port selector
// has a number or a name, a trigger match one kind, a peer mtls or jwt.
func fixLegacy(spec *api.PolicySpec) {
	for i := range spec.Targets {
		for j, p := range spec.Targets[i].Ports {
			if p.Name != "" {
				spec.Targets[i].Ports[j].Number = 0
			}
		}
	}
	for i := range spec.Peers {
		if spec.Peers[i].JWT != nil {
			spec.Peers[i].MTLS = nil
		}
	}
	for _, o := range spec.Origins {
		if o.JWT == nil {
			continue
		}
		for i := range o.JWT.TriggerRules {
			for _, ms := range [][]api.AuthnStringMatch{o.JWT.TriggerRules[i].ExcludedPaths, o.JWT.TriggerRules[i].IncludedPaths} {
				for j, m := range ms {
					if m.Prefix != "" || m.Suffix != "" || m.Regex != "" {
						ms[j].Exact = ""
					}
				}
			}
		}
	}
}
