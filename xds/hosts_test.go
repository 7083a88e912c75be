package xds_test

import (
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/xds"
)

// TestJwksHostAsIstio is the table of jwksUri host forms: the cluster
// Istio's jwt filter names for each (JwksFetchMode Envoy, whose cluster
// comes from pilot/pkg/model LookupCluster over istiod's service index, or
// model.BuildSubsetKey(outbound, "", host, port) when that look-up fails),
// and warden's. The index istiod builds (PushContext.initServiceRegistry)
// is keyed by each Service's hostname, a Kubernetes Service's FQDN, so
// LookupCluster finds only the FQDN and exact ServiceEntry hosts; warden
// also resolves name.namespace and name.namespace.svc (see xds.HostIndex),
// as Istio's TestJwtFilter expects for name.namespace. Every host warden
// cannot resolve to a cluster of the registry is reported. The Istio
// column was checked by running LookupCluster over a push context built
// by PushContext.InitContext (istio.io/istio at hack/istioauthz's
// version), with these services.
func TestJwksHostAsIstio(t *testing.T) {
	t.Parallel()
	port := func(n uint32) []xds.ServicePort { return []xds.ServicePort{{Number: n, Name: "http"}} }
	services := []*xds.Service{
		{Host: "jwt-token-issuer.mesh.svc.cluster.local", Name: "jwt-token-issuer", Namespace: "mesh", Ports: port(7443)},
		{Host: "auth.example.com", Name: "auth", Namespace: "a", Ports: port(443), External: true},
		// Two namespaces' ServiceEntries for one host: warden's own
		// registries refuse this (ServicesFromEntries) or keep the
		// Kubernetes Service (MergeServices), but the resolver answers as
		// Istio's index does.
		{Host: "shared.example.com", Name: "shared", Namespace: "a", Ports: port(443), External: true},
		{Host: "shared.example.com", Name: "shared", Namespace: "b", Ports: port(443), External: true},
	}
	const fqdn = "jwt-token-issuer.mesh.svc.cluster.local"
	for _, tc := range []struct {
		name, uri string
		istio     string // the cluster Istio names
		why       string // the Istio function that decides it
		warden    string // the cluster warden names
		report    string // "" when warden resolves it to a cluster of the registry
	}{
		// warden differs from istiod exactly where the cluster Istio names
		// does not exist and the URI names a Kubernetes Service: the short
		// forms name.ns and name.ns.svc.
		{"name", "http://jwt-token-issuer:7443/jwks", "outbound|7443||jwt-token-issuer",
			"LookupCluster: no index key jwt-token-issuer; BuildSubsetKey fallback",
			"outbound|7443||jwt-token-issuer", "host jwt-token-issuer is a bare name"},
		{"name.ns", "http://jwt-token-issuer.mesh:7443/jwks", "outbound|7443||jwt-token-issuer.mesh",
			"LookupCluster: no index key jwt-token-issuer.mesh in istiod's index (TestJwtFilter's hand-made index has it and expects the FQDN)",
			"outbound|7443||" + fqdn, ""},
		{"name.ns.svc", "http://jwt-token-issuer.mesh.svc:7443/jwks", "outbound|7443||jwt-token-issuer.mesh.svc",
			"LookupCluster: no index key jwt-token-issuer.mesh.svc; BuildSubsetKey fallback",
			"outbound|7443||" + fqdn, ""},
		{"FQDN", "http://" + fqdn + ":7443/jwks", "outbound|7443||" + fqdn,
			"LookupCluster: the index key, one namespace",
			"outbound|7443||" + fqdn, ""},
		{"FQDN, no port: http is 80", "http://" + fqdn + "/jwks", "outbound|80||" + fqdn,
			"ParseJwksURI: 80 for http; LookupCluster does not check the port",
			"outbound|80||" + fqdn, "service " + fqdn + " has no port 80"},
		{"external host", "https://issuer.example.org/jwks", "outbound|443||issuer.example.org",
			"ParseJwksURI: 443 for https; LookupCluster: not found; BuildSubsetKey fallback",
			"outbound|443||issuer.example.org", "no service issuer.example.org in the registry"},
		{"external host with a ServiceEntry", "https://auth.example.com/jwks", "outbound|443||auth.example.com",
			"LookupCluster: the ServiceEntry's host, one namespace",
			"outbound|443||auth.example.com", ""},
		{"host two namespaces define", "https://shared.example.com/jwks", "outbound|443||shared.example.com",
			`LookupCluster: "found shared.example.com in multiple namespaces"; BuildSubsetKey fallback`,
			"outbound|443||shared.example.com", "host shared.example.com is defined in several namespaces (a, b)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ra := &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt", Namespace: "foo"},
				Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: "mesh cluster", JwksURI: tc.uri}}}}
			ix, err := authn.NewIndex([]api.Object{ra}, authn.Options{Hosts: xds.NewHostIndex(services, "")})
			if err != nil {
				t.Fatal(err)
			}
			out, err := ix.Compile(authn.Workload{Namespace: "foo", Ports: []authn.Port{{Number: 8080, Name: "http"}}})
			if err != nil {
				t.Fatal(err)
			}
			if differs := strings.HasPrefix(tc.name, "name.ns"); (tc.istio != tc.warden) != differs {
				t.Errorf("Istio names %s, warden %s: the table says they differ only for name.ns and name.ns.svc", tc.istio, tc.warden)
			}
			got := out.JWT.GetProviders()["origins-0"].GetRemoteJwks().GetHttpUri().GetCluster()
			if got != tc.warden {
				t.Errorf("cluster %s, want %s (Istio: %s, by %s)", got, tc.warden, tc.istio, tc.why)
			}
			var reports []string
			for _, c := range out.Settings.Conflicts {
				if !strings.Contains(c, "fetched in the clear") {
					reports = append(reports, c)
				}
			}
			switch {
			case tc.report == "" && len(reports) > 0:
				t.Errorf("reported %q", reports)
			case tc.report != "" && (len(reports) != 1 || !strings.Contains(reports[0], tc.report) || !strings.Contains(reports[0], "refuses its tokens")):
				t.Errorf("reports %q, want one containing %q", reports, tc.report)
			}
		})
	}
}

// TestJwksClustersChanged: the server recompiles jwt_authn when a
// jwksUri's cluster moves with the registry — the issuer's Service
// appearing, or losing the URI's port — but not for endpoint churn, nor
// for a jwksUri only one side has (policy edits: Affects decides).
func TestJwksClustersChanged(t *testing.T) {
	t.Parallel()
	ra := func(uri string) *api.RequestAuthentication {
		return &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt-" + uri[len(uri)-1:], Namespace: "foo"},
			Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: "mesh cluster", JwksURI: uri}}}}
	}
	issuer := func(port uint32, addr string) *xds.Service {
		return &xds.Service{Host: "jwt-token-issuer.mesh.svc.cluster.local", Name: "jwt-token-issuer", Namespace: "mesh",
			Ports: []xds.ServicePort{{Number: port, Name: "http"}}, Endpoints: []xds.Endpoint{{Address: addr}}}
	}
	mesh := func(services []*xds.Service, objs ...api.Object) *xds.Mesh {
		m, err := xds.NewMesh(objs, services, xds.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	short := ra("http://jwt-token-issuer.mesh:7443/jwks")
	other := ra("https://issuer.example.org/jwks")
	for _, tc := range []struct {
		name         string
		before, next *xds.Mesh
		want         bool
	}{
		{"the Service appears", mesh(nil, short), mesh([]*xds.Service{issuer(7443, "10.0.3.7")}, short), true},
		{"the Service goes", mesh([]*xds.Service{issuer(7443, "10.0.3.7")}, short), mesh(nil, short), true},
		{"its port changes", mesh([]*xds.Service{issuer(7443, "10.0.3.7")}, short), mesh([]*xds.Service{issuer(8443, "10.0.3.7")}, short), true},
		{"its endpoints change", mesh([]*xds.Service{issuer(7443, "10.0.3.7")}, short), mesh([]*xds.Service{issuer(7443, "10.0.3.8")}, short), false},
		{"a policy is added", mesh(nil, short), mesh(nil, short, other), false},
	} {
		if got := tc.before.JwksClustersChanged(tc.next); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
