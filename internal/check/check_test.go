package check_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/xds"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

func cert(t *testing.T, name string, notAfter time.Time, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func statuses(rs []check.Result) map[check.Status][]string {
	out := map[check.Status][]string{}
	for _, r := range rs {
		out[r.Status] = append(out[r.Status], r.Message)
	}
	return out
}

// TestCA: a healthy chain is ok; an expired certificate is an error; one
// expiring within the warning window is a warning; a signing certificate
// from another root is an error.
func TestCA(t *testing.T) {
	now := time.Now()
	root, rootKey := cert(t, "root", now.Add(365*24*time.Hour), nil, nil)
	inter, _ := cert(t, "intermediate", now.Add(10*24*time.Hour), root, rootKey)
	other, _ := cert(t, "other root", now.Add(365*24*time.Hour), nil, nil)
	old, _ := cert(t, "old root", now.Add(-time.Hour), nil, nil)
	for _, tc := range []struct {
		name  string
		m     *ca.Material
		worst check.Status
		want  string
	}{
		{"healthy", &ca.Material{Cert: inter, Roots: []*x509.Certificate{root}}, check.OK, "chains to the trust bundle"},
		{"expiring", &ca.Material{Cert: inter, Roots: []*x509.Certificate{root}}, check.Warn, `"CN=intermediate" expires in`},
		{"foreign", &ca.Material{Cert: inter, Roots: []*x509.Certificate{other}}, check.Error, "does not chain to the trust bundle"},
		{"expired", &ca.Material{Cert: old, Roots: []*x509.Certificate{old}}, check.Error, `"CN=old root" expired at`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			warn := time.Hour
			if tc.name == "expiring" {
				warn = 30 * 24 * time.Hour
			}
			got := statuses(check.CA("ca", tc.m, now, warn))
			worst := check.OK
			if len(got[check.Warn]) > 0 {
				worst = check.Warn
			}
			if len(got[check.Error]) > 0 {
				worst = check.Error
			}
			if worst != tc.worst || !strings.Contains(strings.Join(got[tc.worst], "\n"), tc.want) {
				t.Fatalf("got %v, want %s containing %q", got, tc.worst, tc.want)
			}
		})
	}
}

// TestPolicy: a VirtualService to an unknown host or subset is an error,
// a selector matching nothing (printed k=v,k=v) and a compiler report are
// warnings, a clean configuration is ok.
func TestPolicy(t *testing.T) {
	services := []*xds.Service{{Host: "web.default.svc.cluster.local", Name: "web", Namespace: "default", Ports: []xds.ServicePort{{Number: 80, Name: "http"}},
		Endpoints: []xds.Endpoint{{Address: "10.0.0.1", Labels: map[string]string{"app": "web"}, ServiceAccount: "web"}}}}
	meta := func(n string) api.ObjectMeta { return api.ObjectMeta{Name: n, Namespace: "default"} }
	clean := []api.Object{&api.AuthorizationPolicy{Metadata: meta("ok"), Spec: api.AuthorizationPolicySpec{Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}}}}}
	got, err := check.Policy(clean, services, xds.Options{})
	if err != nil || len(got) != 1 || got[0].Status != check.OK {
		t.Fatalf("clean: %v %v", got, err)
	}
	bad := []api.Object{
		&api.AuthorizationPolicy{Metadata: meta("nobody"), Spec: api.AuthorizationPolicySpec{Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"version": "v2", "app": "gone"}}}},
		&api.Gateway{Metadata: meta("gw"), Spec: api.GatewaySpec{Selector: map[string]string{"istio": "ingressgateway"}}},
		&api.VirtualService{Metadata: meta("v"), Spec: api.VirtualServiceSpec{Hosts: []string{"web"}, HTTP: []api.HTTPRoute{
			{Route: []api.HTTPRouteDestination{{Destination: api.Destination{Host: "nothere"}}}},
			{Route: []api.HTTPRouteDestination{{Destination: api.Destination{Host: "web", Subset: "v9"}}}},
			{Delegate: &api.Delegate{Name: "more-routes"}},
		}}},
	}
	got, err = check.Policy(bad, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := statuses(got)
	for st, want := range map[check.Status][]string{
		check.Error: {"destination host nothere.default.svc.cluster.local is not in the service registry", "destination web.default.svc.cluster.local subset v9 is not defined by a DestinationRule"},
		// Selectors as --labels spells them, never Go's map syntax.
		check.Warn: {"AuthorizationPolicy default/nobody: selector app=gone,version=v2 matches no workload in the registry",
			"Gateway default/gw: selector istio=ingressgateway matches no workload in the registry: no gateway serves it", "http[2].delegate is not supported; the rule is skipped"},
	} {
		for _, w := range want {
			if !strings.Contains(strings.Join(s[st], "\n"), w) {
				t.Errorf("%s results %q lack %q", st, s[st], w)
			}
		}
	}
}

// TestPolicyRequestPrincipalSplit: warden check warns about a request
// principal that means issuer "https:/" (rbac.Check, as policy check),
// naming the value to write, on a policy that selects a workload and on
// one that selects none.
func TestPolicyRequestPrincipalSplit(t *testing.T) {
	t.Parallel()
	services := []*xds.Service{{Host: "web.default.svc.cluster.local", Name: "web", Namespace: "default", Ports: []xds.ServicePort{{Number: 80, Name: "http"}},
		Endpoints: []xds.Endpoint{{Address: "10.0.0.1", Labels: map[string]string{"app": "web"}, ServiceAccount: "web"}}}}
	policy := func(name, app string) *api.AuthorizationPolicy {
		return &api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: name, Namespace: "default"}, Spec: api.AuthorizationPolicySpec{
			Selector: &api.WorkloadSelector{MatchLabels: map[string]string{"app": app}},
			Rules:    []api.Rule{{From: []api.RuleFrom{{Source: &api.Source{RequestPrincipals: []string{"https://issuer.example.com*"}}}}}}}}
	}
	got, err := check.Policy([]api.Object{policy("web", "web"), policy("gone", "gone")}, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	warnings := strings.Join(statuses(got)[check.Warn], "\n")
	for _, name := range []string{"web", "gone"} {
		want := "AuthorizationPolicy default/" + name + ` rule 0: source.requestPrincipals: "https://issuer.example.com*" means issuer "https:/" and a subject starting "issuer.example.com" (Istio splits issuer and subject at the last "/"), which no token has; for any subject of issuer https://issuer.example.com write "https://issuer.example.com/*"`
		if strings.Count(warnings, want) != 1 {
			t.Errorf("warnings lack (once) %q:\n%s", want, warnings)
		}
	}
}

// TestProxies: a proxy that has not ACKed a push for longer than the
// limit is an error naming it and the types (the server lists type URLs;
// the check names them as Istio does).
func TestProxies(t *testing.T) {
	now := time.Now()
	st := []xdsserver.ProxyStatus{{Node: "sidecar~10.0.0.1~a.default~default.svc.cluster.local"},
		{Node: "sidecar~10.0.0.2~b.default~default.svc.cluster.local", Pending: []string{"type.googleapis.com/envoy.config.listener.v3.Listener"}, Since: now.Add(-5 * time.Minute)}}
	got := statuses(check.Proxies(st, now, time.Minute))
	if len(got[check.Error]) != 1 || !strings.Contains(got[check.Error][0], "b.default") || !strings.Contains(got[check.Error][0], "has not ACKed lds for 5m0s") {
		t.Fatalf("got %v", got)
	}
	if got := statuses(check.Proxies(st[:1], now, time.Minute)); len(got[check.OK]) != 1 {
		t.Fatalf("healthy: %v", got)
	}
}

// TestPolicyDanglingClusters: a jwt_authn remote_jwks cluster the proxy
// does not have is an error — a bare-name jwksUri host (Istio's look-up
// finds only registry hostnames), and a resolved one a Sidecar hides —
// while the short form name.namespace resolves to the Service's cluster,
// which the proxy has; a CUSTOM provider's ext-authz|<name> cluster, which
// only the bootstrap can define, is a warning.
func TestPolicyDanglingClusters(t *testing.T) {
	ep := func(addr, app string) []xds.Endpoint {
		return []xds.Endpoint{{Address: addr, Labels: map[string]string{"app": app}, ServiceAccount: app}}
	}
	http := func(n uint32) []xds.ServicePort { return []xds.ServicePort{{Number: n, Name: "http"}} }
	services := []*xds.Service{
		{Host: "jwt-token-issuer.mesh.svc.cluster.local", Name: "jwt-token-issuer", Namespace: "mesh", Ports: http(7443), Endpoints: ep("10.0.3.7", "issuer")},
		{Host: "web.default.svc.cluster.local", Name: "web", Namespace: "default", Ports: http(80), Endpoints: ep("10.0.0.1", "web")},
		{Host: "api.scoped.svc.cluster.local", Name: "api", Namespace: "scoped", Ports: http(80), Endpoints: ep("10.0.2.9", "api")},
	}
	ra := func(ns string, uris ...string) *api.RequestAuthentication {
		r := &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt", Namespace: ns}}
		for i, u := range uris {
			r.Spec.JWTRules = append(r.Spec.JWTRules, api.JWTRule{Issuer: fmt.Sprintf("issuer-%d", i), JwksURI: u})
		}
		return r
	}
	objs := []api.Object{
		ra("default", "http://jwt-token-issuer.mesh:7443/jwks", "http://jwt-token-issuer:7443/jwks"),
		ra("scoped", "http://jwt-token-issuer.mesh:7443/jwks"),
		&api.Sidecar{Metadata: api.ObjectMeta{Name: "default", Namespace: "scoped"}, Spec: api.SidecarSpec{Egress: []api.IstioEgressListener{{Hosts: []string{"./*"}}}}},
		&api.AuthorizationPolicy{Metadata: api.ObjectMeta{Name: "ext", Namespace: "default"}, Spec: api.AuthorizationPolicySpec{Action: "CUSTOM",
			Provider: &api.ExtensionProvider{Name: "opa"}, Rules: []api.Rule{{To: []api.RuleTo{{Operation: &api.Operation{Paths: []string{"/admin"}}}}}}}},
	}
	got, err := check.Policy(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var clusters []string
	for _, r := range got {
		if r.Check == "clusters" {
			clusters = append(clusters, string(r.Status)+": "+r.Message)
		}
	}
	want := []string{
		`warning: envoy.filters.http.ext_authz of default/10.0.0.1 calls cluster ext-authz|opa for CUSTOM provider "opa", which warden does not serve: the proxy's bootstrap must define it, or the requests the CUSTOM policy selects are refused (403)`,
		`error: jwt_authn of default/10.0.0.1 fetches the keys of issuer "issuer-1" (jwksUri http://jwt-token-issuer:7443/jwks) through cluster outbound|7443||jwt-token-issuer, which its proxy does not have: tokens of that issuer are refused (401); name a service of the registry and one of its ports (docs/policy-authn.md), and let the proxy see it (Sidecar egress, exportTo)`,
		`error: jwt_authn of scoped/10.0.2.9 fetches the keys of issuer "issuer-0" (jwksUri http://jwt-token-issuer.mesh:7443/jwks) through cluster outbound|7443||jwt-token-issuer.mesh.svc.cluster.local, which its proxy does not have: tokens of that issuer are refused (401); name a service of the registry and one of its ports (docs/policy-authn.md), and let the proxy see it (Sidecar egress, exportTo)`,
	}
	if strings.Join(clusters, "\n") != strings.Join(want, "\n") {
		t.Errorf("clusters findings:\n%s\nwant:\n%s", strings.Join(clusters, "\n"), strings.Join(want, "\n"))
	}
	// The bare name is also the compiler's report, as serve logs it.
	s := statuses(got)
	if w := strings.Join(s[check.Warn], "\n"); !strings.Contains(w, "jwksUri http://jwt-token-issuer:7443/jwks: host jwt-token-issuer is a bare name") {
		t.Errorf("warnings lack the compiler's report on the bare name: %s", w)
	}
}

// TestListed: a finding about many objects counts them and names the
// first ten on its line, and keeps them all for -o json.
func TestListed(t *testing.T) {
	many := make([]string, 1011)
	for i := range many {
		many[i] = fmt.Sprintf("ns-%04d", i)
	}
	for _, tc := range []struct {
		items []string
		want  string
	}{
		{[]string{"a"}, "missing in 1 namespace: a (why)"},
		{[]string{"a", "b"}, "missing in 2 namespaces: a, b (why)"},
		{many[:10], "missing in 10 namespaces: " + strings.Join(many[:10], ", ") + " (why)"},
		{many, "missing in 1,011 namespaces: " + strings.Join(many[:10], ", ") + " and 1,001 more (why)"},
	} {
		r := check.Listed("bundle", check.Error, tc.items, "namespace", "missing in %s (why)")
		if r.Message != tc.want || len(r.Items) != len(tc.items) || r.Check != "bundle" || r.Status != check.Error {
			t.Errorf("%d items: %q with %d items, want %q", len(tc.items), r.Message, len(r.Items), tc.want)
		}
	}
	if r := check.Listed("bundle", check.Error, many, "namespace", "missing in %s"); len(r.Message) > 200 {
		t.Errorf("a line of %d characters for 1,011 namespaces: %s", len(r.Message), r.Message)
	}
}
