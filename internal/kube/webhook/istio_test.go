package webhook_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/internal/kube/webhook"
	"github.com/wardenmesh/warden/internal/testkit"
)

// knownDifferences are the corpus objects warden's webhook decides
// otherwise than Istio's validation, each with its reason (documented in
// docs/install-kubernetes.md, Istio's admission webhooks). The test fails
// if one of them agrees: the list stays true.
var knownDifferences = map[string]string{
	"testdata/istio-rules.yaml#jwks-uri-without-issuer": "warden refuses a JWT rule without issuer: its authentication compiler needs one, and the whole mesh configuration would stop applying",
}

// TestAgreesWithIstio: for every security and networking object of
// warden's test corpus (the authn, rbac and xds golden inputs, the docs'
// examples, and testdata/istio-rules.yaml, one Istio rule per object),
// warden's webhook admits what Istio's validation (istioctl validate,
// hack/istioctl.sh: the same pkg/config/validation istiod's webhook runs)
// admits, and refuses what it refuses.
func TestAgreesWithIstio(t *testing.T) {
	istioctl := os.Getenv("WARDEN_ISTIOCTL")
	if istioctl == "" {
		t.Fatal("WARDEN_ISTIOCTL is not set: run make test, or export WARDEN_ISTIOCTL=$(hack/istioctl.sh)")
	}
	root := testkit.RepoRoot()
	var files []string
	for _, g := range []string{"authn/testdata/*.yaml", "rbac/testdata/*/*-in.yaml", "xds/testdata/*/*.yaml", "docs/examples/*.yaml", "docs/examples/*/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(root, g))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	files = append(files, "testdata/istio-rules.yaml")
	sep := regexp.MustCompile(`(?m)^---[ \t]*$`)
	type object struct {
		where  string
		kind   string
		warden string // "" admitted, else why refused
	}
	var objs []object
	var all bytes.Buffer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		if !filepath.IsAbs(f) {
			rel = f
		}
		for _, doc := range sep.Split(string(b), -1) {
			j, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				continue
			}
			var o map[string]any
			if json.Unmarshal(j, &o) != nil || o == nil {
				continue
			}
			apiVersion, _ := o["apiVersion"].(string)
			if !strings.HasPrefix(apiVersion, "security.istio.io/") && !strings.HasPrefix(apiVersion, "networking.istio.io/") {
				continue
			}
			md, _ := o["metadata"].(map[string]any)
			if md == nil {
				md = map[string]any{}
				o["metadata"] = md
			}
			name, _ := md["name"].(string)
			// Unique names: Istio's report names objects, not files.
			md["name"] = fmt.Sprintf("case-%04d", len(objs))
			if md["namespace"] == nil {
				md["namespace"] = "default"
			}
			j, _ = json.Marshal(o)
			resp := (&webhook.Validator{}).Review(&admissionv1.AdmissionRequest{Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: j}})
			why := ""
			if !resp.Allowed {
				why = resp.Result.Message
			}
			y, _ := yaml.JSONToYAML(j)
			all.WriteString("---\n")
			all.Write(y)
			objs = append(objs, object{where: rel + "#" + name, kind: o["kind"].(string), warden: why})
		}
	}
	if len(objs) < 150 {
		t.Fatalf("only %d objects in the corpus", len(objs))
	}
	file := filepath.Join(t.TempDir(), "corpus.yaml")
	if err := os.WriteFile(file, all.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(istioctl, "validate", "-f", file).CombinedOutput() // exit 1 when any is invalid
	// Errors follow "Error:"; warnings, listed the same way, come before.
	istio := map[int]string{} // case -> Istio's errors
	if k := bytes.Index(out, []byte("Error:")); k >= 0 {
		for _, m := range regexp.MustCompile(`(?m)^\s*\* \w+/[^/]*/case-(\d+): (.*)$`).FindAllSubmatch(out[k:], -1) {
			i, _ := strconv.Atoi(string(m[1]))
			istio[i] += string(m[2])
		}
	}
	agreeAdmit, agreeRefuse := 0, 0
	var differ []string
	for i, o := range objs {
		istioErr, refusedByIstio := istio[i]
		switch {
		case refusedByIstio == (o.warden != ""):
			if refusedByIstio {
				agreeRefuse++
			} else {
				agreeAdmit++
			}
			if _, listed := knownDifferences[o.where]; listed {
				t.Errorf("%s is listed as a known difference but both decide alike: update knownDifferences", o.where)
			}
		case knownDifferences[o.where] != "":
			differ = append(differ, o.where)
		case refusedByIstio:
			t.Errorf("%s (%s): Istio refuses it (%s), warden admits it", o.where, o.kind, istioErr)
		default:
			t.Errorf("%s (%s): Istio admits it, warden refuses it: %s", o.where, o.kind, o.warden)
		}
	}
	for k := range knownDifferences {
		if !slices.Contains(differ, k) {
			t.Errorf("known difference %s is not in the corpus", k)
		}
	}
	t.Logf("%d objects: %d admitted by both, %d refused by both, %d known differences", len(objs), agreeAdmit, agreeRefuse, len(differ))
}
