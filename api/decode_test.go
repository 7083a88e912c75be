package api_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
)

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	const ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\n"
	cases := []struct{ name, in, want string }{
		{"unknown field", ap + "spec:\n  rules:\n  - from:\n    - source:\n        principalz: [x]\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec.rules[0].from[0].source.principalz: unknown field"},
		{"bad enum", ap + "spec: {action: ALOW}\n",
			`api: document 1 (AuthorizationPolicy default/deny-all): spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"wrong type", ap + "spec:\n  rules:\n  - to:\n    - operation: {ports: [8080]}\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec.rules[0].to[0].operation.ports[0]: expected a string, got number 8080"},
		{"second document", "---\n" + ap + "spec: {}\n---\n" + strings.Replace(ap, "deny-all", "two", 1) + "spec: {selector: x}\n",
			"api: document 2 (AuthorizationPolicy default/two): spec.selector: expected an object, got string \"x\""},
		{"unknown kind", "apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\nspec: {}\n",
			"api: document 1: unknown kind Sidecar in security.istio.io/v1"},
		{"unknown version", "apiVersion: security.istio.io/v1alpha9\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {}\n",
			"api: document 1: unknown kind PeerAuthentication in security.istio.io/v1alpha9"},
		{"no name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {}\nspec: {}\n",
			"api: document 1 (PeerAuthentication): metadata.name is required"},
		{"bad mode", "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRIKT}}\n",
			`api: document 1 (PeerAuthentication default): spec.mtls.mode: "STRIKT" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`},
		{"bad port key", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {http: {mode: DISABLE}}}\n",
			`api: document 1 (PeerAuthentication p): spec.portLevelMtls["http"]: key is not a port number (1-65535)`},
		{"bad duration", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {http: [{timeout: soon}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].timeout: "soon" is not a duration such as "1.5s" or "100ms"`},
		{"missing host", "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: d}\nspec: {subsets: [{name: v1}]}\n",
			"api: document 1 (DestinationRule d): spec.host: required field missing"},
		{"cluster-scoped with namespace", "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default, namespace: x}\nspec: {}\n",
			"api: document 1 (MeshPolicy x/default): MeshPolicy is cluster-scoped and takes no namespace"},
		{"negative port", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: -1, protocol: HTTP, name: http}, hosts: ['*']}]}\n",
			"api: document 1 (Gateway g): spec.servers[0].port.number: expected a non-negative integer in range, got number -1"},
		{"unquoted ON", "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: ON}\n",
			"api: document 1 (ClusterRbacConfig default): spec.mode: expected a string, got true (YAML reads unquoted on, off, yes and no as booleans: quote the value)"},
		{"not YAML", "a: [\n", "api: document 1: "},
		{"scalar document", "hello\n", "api: document 1: expected an object, got string \"hello\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := api.Decode([]byte(tc.in))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || (!strings.HasSuffix(tc.want, ": ") && err.Error() != tc.want) {
				t.Fatalf("err = %v\nwant  %s", err, tc.want)
			}
		})
	}
}

func TestDecodeAcceptsAPIServerMetadataAndLists(t *testing.T) {
	t.Parallel()
	in := `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule",
"metadata":{"name":"flaskapp","namespace":"default","uid":"1234","resourceVersion":"9","managedFields":[{"manager":"kubectl"}]},
"spec":{"host":"flaskapp","subsets":[{"name":"v1","labels":{"version":"v1"}}]}}]}`
	objs, err := api.Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	dr, ok := objs[0].(*api.DestinationRule)
	if !ok || dr.Spec.Host != "flaskapp" || dr.Spec.Subsets[0].Labels["version"] != "v1" || dr.Meta().Namespace != "default" {
		t.Fatalf("decoded %#v", objs[0])
	}
}

// TestExamplesDecode: every example in docs/examples is valid.
func TestExamplesDecode(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("../docs/examples/*.yaml")
	if len(files) < 9 {
		t.Fatalf("only %d examples", len(files))
	}
	kinds := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := api.Decode(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
		for _, o := range objs {
			kinds[o.Type().Kind] = true
		}
	}
	for _, k := range []string{"MeshPolicy", "Policy", "ServiceRole", "ServiceRoleBinding", "ClusterRbacConfig", "DestinationRule", "VirtualService", "PeerAuthentication", "AuthorizationPolicy"} {
		if !kinds[k] {
			t.Errorf("no %s among the examples", k)
		}
	}
}

// FuzzDecode: any input decodes or fails with an "api:" error; never a
// panic. Seeds: testdata/fuzz/FuzzDecode and the examples.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("../docs/examples/*.yaml")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := api.Decode(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "api: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		for _, o := range objs {
			if o.Meta().Name == "" {
				t.Fatal("decoded an object without a name")
			}
		}
	})
}
