package api_test

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
)

// TestSchemasMatchIstio compares each generated schema with Istio's own,
// from the istio.io/api module go.mod requires
// (kubernetes/customresourcedefinitions.gen.yaml in the module cache), for
// every kind and version both define: the same fields, with the same type,
// format, enum, required list and nullability. Istio's extra constraints
// (lengths, patterns, CEL rules) are not compared; Validate implements the
// ones that matter.
func TestSchemasMatchIstio(t *testing.T) {
	t.Parallel()
	path := istioCRDs(t)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("Istio's CRDs: %v", err)
	}
	istio := map[string]map[string]any{} // "group/version Kind" -> spec schema
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var crd struct {
			Spec struct {
				Group string
				Names struct{ Kind string }
				// Versions hold the schema.
				Versions []struct {
					Name   string
					Schema struct {
						OpenAPIV3Schema struct {
							Properties map[string]map[string]any
						} `json:"openAPIV3Schema"`
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &crd); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for _, v := range crd.Spec.Versions {
			istio[crd.Spec.Group+"/"+v.Name+" "+crd.Spec.Names.Kind] = v.Schema.OpenAPIV3Schema.Properties["spec"]
		}
	}
	compared := 0
	for _, k := range api.Kinds {
		b, err := api.CRD(k)
		if err != nil {
			t.Fatal(err)
		}
		var ours struct {
			Spec struct {
				Versions []struct {
					Name   string
					Schema struct {
						OpenAPIV3Schema struct {
							Properties map[string]map[string]any
						} `json:"openAPIV3Schema"`
					}
				}
			}
		}
		if err := yaml.Unmarshal(b, &ours); err != nil {
			t.Fatal(err)
		}
		for _, v := range ours.Spec.Versions {
			theirs, ok := istio[k.Group+"/"+v.Name+" "+k.Kind]
			if !ok {
				continue // v1alpha1 authentication and rbac left Istio in 1.6
			}
			compared++
			a, b := flatten("spec", v.Schema.OpenAPIV3Schema.Properties["spec"]), flatten("spec", theirs)
			for _, p := range slices.Sorted(maps.Keys(b)) {
				if _, ok := a[p]; !ok {
					t.Errorf("%s %s: %s is in Istio's schema (%s), not in ours", k.Kind, v.Name, p, b[p])
				} else if a[p] != b[p] {
					t.Errorf("%s %s: %s is %s, Istio's is %s", k.Kind, v.Name, p, a[p], b[p])
				}
			}
			for _, p := range slices.Sorted(maps.Keys(a)) {
				if _, ok := b[p]; !ok {
					t.Errorf("%s %s: %s is not in Istio's schema", k.Kind, v.Name, p)
				}
			}
		}
	}
	if compared < 15 {
		t.Errorf("compared %d kind versions with Istio's; want the 15 security and networking ones", compared)
	}
}

// flatten maps each field path below s to what is compared of it.
func flatten(path string, s map[string]any) map[string]string {
	out := map[string]string{}
	var req []string
	for _, r := range list(s["required"]) {
		req = append(req, fmt.Sprint(r))
	}
	slices.Sort(req)
	out[path] = fmt.Sprintf("type=%v format=%v enum=%v required=%v nullable=%v", s["type"], s["format"], s["enum"], req, s["nullable"] == true)
	if props, ok := s["properties"].(map[string]any); ok {
		for k, v := range props {
			sub, _ := v.(map[string]any)
			maps.Copy(out, flatten(path+"."+k, sub))
		}
	}
	if items, ok := s["items"].(map[string]any); ok {
		maps.Copy(out, flatten(path+"[]", items))
	}
	if ap, ok := s["additionalProperties"].(map[string]any); ok {
		maps.Copy(out, flatten(path+"{}", ap))
	}
	return out
}

// istioCRDs is where the module cache keeps the istio.io/api version
// go.mod requires.
func istioCRDs(t *testing.T) string {
	// go list downloads the module if the cache lacks it, so a fresh
	// machine compares too instead of skipping.
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("locating istio.io/api (go.mod must require it): %v", err)
	}
	return filepath.Join(dir, "kubernetes", "customresourcedefinitions.gen.yaml")
}
