package server_test

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/server"
)

// TestRegistryChangeRecompilesJwks: a jwksUri's cluster depends on the
// registry (the service its host names), so a registry change that
// resolves it — the issuer's Service created after the
// RequestAuthentication, with no configuration object changed, as in
// Kubernetes — pushes the workload a jwt_authn naming the Service's
// cluster.
func TestRegistryChangeRecompilesJwks(t *testing.T) {
	srv, c := startADS(t)
	objs, services := server.FlaskappExample(t)
	objs = append(objs, &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt", Namespace: "default"},
		Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: "mesh cluster", JwksURI: "http://jwt-token-issuer.mesh:7443/jwks"}}}})
	if err := srv.Apply(objs, services); err != nil {
		t.Fatal(err)
	}
	s, err := c.StreamAggregatedResources(asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	recv := func() (*discovery.DiscoveryResponse, string) {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r, jwksCluster(t, r)
	}
	r, cluster := recv()
	if cluster != "outbound|7443||jwt-token-issuer.mesh" {
		t.Fatalf("before the issuer's Service exists: remote_jwks cluster %q, want the host as written", cluster)
	}
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}
	issuer := &xds.Service{Host: "jwt-token-issuer.mesh.svc.cluster.local", Name: "jwt-token-issuer", Namespace: "mesh",
		Ports: []xds.ServicePort{{Number: 7443, Name: "http"}}, Endpoints: []xds.Endpoint{{Address: "10.0.3.7"}}}
	if err := srv.Apply(objs, append(services[:len(services):len(services)], issuer)); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		r, err := s.Recv()
		if err == nil {
			got <- jwksCluster(t, r)
		}
	}()
	select {
	case cluster := <-got:
		if cluster != "outbound|7443||jwt-token-issuer.mesh.svc.cluster.local" {
			t.Errorf("after: remote_jwks cluster %q, want the Service's", cluster)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("flaskapp was not pushed listeners when the jwksUri's Service appeared")
	}
}

// jwksCluster is the remote_jwks cluster of the jwt_authn filter in r's
// listeners ("" if none).
func jwksCluster(t *testing.T, r *discovery.DiscoveryResponse) string {
	for _, a := range r.Resources {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Error(err)
			return ""
		}
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				for _, hf := range h.HttpFilters {
					var j jwtv3.JwtAuthentication
					if hf.Name != authn.JWTAuthnFilter || hf.GetTypedConfig().UnmarshalTo(&j) != nil {
						continue
					}
					for _, p := range j.Providers {
						return p.GetRemoteJwks().GetHttpUri().GetCluster()
					}
				}
			}
		}
	}
	return ""
}
