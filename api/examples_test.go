package api_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/wardenmesh/warden/api"
)

// examples reads docs/examples/*.yaml, by file name.
func examples(tb testing.TB) map[string][]byte {
	tb.Helper()
	files, err := filepath.Glob("../docs/examples/*.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// TestExamplesDecode: every example in docs/examples decodes, and together
// they tell the seed story with the kinds and versions it should.
func TestExamplesDecode(t *testing.T) {
	t.Parallel()
	want := map[string]string{
		"meshpolicy-strict.yaml":            "authentication.istio.io/v1alpha1 MeshPolicy default",
		"policy-default.yaml":               "authentication.istio.io/v1alpha1 Policy default/default",
		"servicerole.yaml":                  "rbac.istio.io/v1alpha1 ServiceRole default/flaskapp-viewer",
		"servicerolebinding.yaml":           "rbac.istio.io/v1alpha1 ServiceRoleBinding default/sleep-views-flaskapp",
		"clusterrbacconfig.yaml":            "rbac.istio.io/v1alpha1 ClusterRbacConfig default",
		"destinationrule-flaskapp.yaml":     "networking.istio.io/v1 DestinationRule default/flaskapp",
		"virtualservice-flaskapp.yaml":      "networking.istio.io/v1 VirtualService default/flaskapp",
		"peerauthentication-strict.yaml":    "security.istio.io/v1 PeerAuthentication istio-system/default",
		"authorizationpolicy-flaskapp.yaml": "security.istio.io/v1 AuthorizationPolicy default/flaskapp-viewers",
		"serviceentry-flaskapp.yaml":        "networking.istio.io/v1 ServiceEntry default/flaskapp",
	}
	files := examples(t)
	for name, b := range files {
		objs, err := api.Decode(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(objs) != 1 {
			t.Errorf("%s: %d objects, want 1", name, len(objs))
			continue
		}
		o := objs[0]
		id := o.Meta().Name
		if ns := o.Meta().Namespace; ns != "" {
			id = ns + "/" + id
		}
		if got := o.Type().APIVersion + " " + o.Type().Kind + " " + id; want[name] != "" && got != want[name] {
			t.Errorf("%s: %s, want %s", name, got, want[name])
		}
	}
	for name := range want {
		if files[name] == nil {
			t.Errorf("docs/examples/%s is missing", name)
		}
	}
}
