package ambient_test

import (
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

// FuzzAmbientCompile: any configuration the decoder takes compiles
// without panicking into resources that encode, an ALLOW policy never
// gets more groups than it has rules.
func FuzzAmbientCompile(f *testing.F) {
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: [\"80\"], methods: [GET]}}]}]}\n"), "app", "istio-system/ztunnel")
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, portLevelMtls: {\"80\": {mode: DISABLE}}}\n"), "web", "a/b,c/d")
	f.Fuzz(func(t *testing.T, doc []byte, app, _ string) {
		// app is a pod's label value: the API server admits only
		// [A-Za-z0-9._-] there. Bytes that are not UTF-8 cannot be
		// encoded in a protobuf string; xds/server leaves such a
		// resource out (TestZtunnelUnencodableResourceLeftOut).
		if !utf8.ValidString(app) {
			return
		}
		objs, err := api.Decode(doc)
		if err != nil {
			return
		}
		res := ambient.Compile(ambient.Input{Config: objs, Pods: []*ambient.Pod{{Name: "p", Namespace: "shop", IPs: []string{"10.0.0.1"}, Phase: "Running", Labels: map[string]string{"app": app}}}})
		for _, r := range append(append([]ambient.Resource(nil), res.Addresses...), res.Authorizations...) {
			if _, err := proto.Marshal(r.Message); err != nil {
				t.Fatalf("%s: %v", r.Name, err)
			}
		}
		rules := map[string]int{}
		for _, o := range objs {
			if p, ok := o.(*api.AuthorizationPolicy); ok {
				rules[p.Metadata.Namespace+"/"+p.Metadata.Name] = len(p.Spec.Rules)
			}
		}
		for _, r := range res.Authorizations {
			a := r.Message.(*security.Authorization)
			if n, ok := rules[r.Name]; ok && a.Action == security.Action_ALLOW && len(a.Groups) > n {
				t.Fatalf("%s: %d groups from %d rules", r.Name, len(a.Groups), n)
			}
		}
	})
}
