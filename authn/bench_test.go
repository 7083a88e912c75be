package authn_test

import (
	"fmt"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// bigMesh is 1,000 namespaces with 10 PeerAuthentications each (one
// namespace-wide, nine selecting apps) and 100 RequestAuthentications.
func bigMesh(b *testing.B) *authn.Index {
	var objs []api.Object
	for n := range 1000 {
		ns := fmt.Sprintf("ns-%d", n)
		objs = append(objs, &api.PeerAuthentication{Metadata: api.ObjectMeta{Name: "default", Namespace: ns},
			Spec: api.PeerAuthenticationSpec{MTLS: &api.PeerMTLS{Mode: "STRICT"}}})
		for i := 1; i < 10; i++ {
			objs = append(objs, &api.PeerAuthentication{Metadata: api.ObjectMeta{Name: fmt.Sprintf("app-%d", i), Namespace: ns},
				Spec: api.PeerAuthenticationSpec{
					Selector:      &api.WorkloadSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i)}},
					MTLS:          &api.PeerMTLS{Mode: "PERMISSIVE"},
					PortLevelMTLS: map[string]api.PeerMTLS{"9090": {Mode: "DISABLE"}},
				}})
		}
		if n%10 == 0 {
			objs = append(objs, &api.RequestAuthentication{Metadata: api.ObjectMeta{Name: "jwt", Namespace: ns},
				Spec: api.RequestAuthenticationSpec{JWTRules: []api.JWTRule{{Issuer: "https://issuer-" + ns + ".example.com", JwksURI: "https://issuer.example.com/jwks"}}}})
		}
	}
	ix, err := authn.NewIndex(objs, authn.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return ix
}

// BenchmarkCompileAuthn: one workload's settings and Envoy config in a
// mesh of 10,000 PeerAuthentications and 100 RequestAuthentications.
func BenchmarkCompileAuthn(b *testing.B) {
	ix := bigMesh(b)
	w := authn.Workload{Namespace: "ns-500", Labels: map[string]string{"app": "app-3"}, Ports: []authn.Port{{Number: 8080}, {Number: 9090}}}
	b.Run("effective", func(b *testing.B) {
		for b.Loop() {
			if _, err := ix.Effective(w); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compile", func(b *testing.B) {
		for b.Loop() {
			if _, err := ix.Compile(w); err != nil {
				b.Fatal(err)
			}
		}
	})
}
