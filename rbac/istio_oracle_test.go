package rbac_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/rbac"
)

// The differential test against Istio's own authorization builder
// (hack/istioauthz, istio.io/istio built from the module proxy, located by
// testkit.IstioOracle: $WARDEN_ISTIO_AUTHZ_BIN or hack/istioauthz.sh): over
// Istio's builder golden inputs and a generated corpus, warden's filters
// and Istio's decide every request of a table alike, except where a
// difference listed in docs/policy-authz.md explains it.

type oracleCase struct {
	ID                 string            `json:"id"`
	YAML               string            `json:"yaml"`
	Namespace          string            `json:"namespace"`
	Labels             map[string]string `json:"labels,omitempty"`
	RootNamespace      string            `json:"rootNamespace,omitempty"`
	TrustDomain        string            `json:"trustDomain,omitempty"`
	TrustDomainAliases []string          `json:"trustDomainAliases,omitempty"`
	TCP                bool              `json:"tcp,omitempty"`
	MeshConfig         string            `json:"meshConfig,omitempty"`
	Services           json.RawMessage   `json:"services,omitempty"`
	Golden             json.RawMessage   `json:"golden,omitempty"`
}

type oracleResult struct {
	ID            string            `json:"id"`
	Filters       []json.RawMessage `json:"filters"`
	CustomFilters []json.RawMessage `json:"customFilters,omitempty"`
	Warnings      []string          `json:"warnings,omitempty"`
	Error         string            `json:"error"`
}

// askIstio runs the cases through one oracle process.
func askIstio(t *testing.T, cases []oracleCase) []oracleResult {
	t.Helper()
	var res []oracleResult
	for _, line := range testkit.AskIstio(t, nil, cases) {
		var r oracleResult
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("istioauthz output: %v", err)
		}
		res = append(res, r)
	}
	return res
}

// istioOutput reads Istio's filters back into an evaluable Output: the
// CUSTOM builder's filters first, as istiod chains them.
func istioOutput(r oracleResult) (*rbac.Output, error) {
	out := &rbac.Output{}
	for _, raw := range append(append([]json.RawMessage{}, r.CustomFilters...), r.Filters...) {
		var f struct {
			Name        string          `json:"name"`
			TypedConfig json.RawMessage `json:"typed_config"`
		}
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, err
		}
		var typ struct {
			Type string `json:"@type"`
		}
		if err := json.Unmarshal(f.TypedConfig, &typ); err != nil {
			return nil, err
		}
		if !strings.Contains(typ.Type, ".rbac.") {
			continue // ext_authz: its answer is the external server's
		}
		var a anypb.Any
		if err := protojson.Unmarshal(f.TypedConfig, &a); err != nil {
			return nil, err
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, err
		}
		fl, err := rbac.FilterOf(f.Name, m)
		if err != nil {
			return nil, err
		}
		out.Filters = append(out.Filters, fl)
	}
	return out, nil
}

// wardenOutput compiles the case's YAML with warden, as serve would.
func wardenOutput(c oracleCase) (*rbac.Output, []api.Object, error) {
	objs, err := api.Decode([]byte(c.YAML))
	if err != nil {
		return nil, nil, err
	}
	for _, o := range objs {
		if o.Meta().Namespace == "" {
			o.Meta().Namespace = c.Namespace
		}
	}
	opts := rbac.Options{RootNamespace: c.RootNamespace, TrustDomainAliases: c.TrustDomainAliases, TCP: c.TCP}
	if c.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
		if err != nil {
			return nil, nil, err
		}
		opts.TrustDomain = td
	}
	out, err := rbac.Compile(objs, rbac.Workload{Namespace: c.Namespace, Labels: c.Labels}, opts)
	return out, objs, err
}

// knownDifferences are the deliberate differences docs/policy-authz.md
// lists under "Differences from Istio", each with a test of whether it
// explains a disagreement on a case.
var knownDifferences = []struct {
	name    string
	applies func(c oracleCase, objs []api.Object) bool
}{
	{"A `*` inside a path", func(_ oracleCase, objs []api.Object) bool {
		return anyValue(objs, func(field, v string) bool {
			return (field == "paths" || field == "notPaths") && !strings.Contains(v, "{") && strings.Contains(strings.Trim(v, "*"), "*")
		})
	}},
	{"`experimental.envoy.filters.*` conditions", func(_ oracleCase, objs []api.Object) bool {
		return anyValue(objs, func(field, v string) bool { return field == "key" && strings.HasPrefix(v, "experimental.") })
	}},
	{"CUSTOM providers", func(c oracleCase, objs []api.Object) bool {
		return anyValue(objs, func(field, v string) bool { return field == "action" && v == "CUSTOM" })
	}},
}

// anyValue walks the policies' string values with their field names.
func anyValue(objs []api.Object, f func(field, v string) bool) bool {
	for _, o := range objs {
		b, _ := json.Marshal(o)
		var m any
		_ = json.Unmarshal(b, &m)
		if walkValues("", m, f) {
			return true
		}
	}
	return false
}

func walkValues(field string, v any, f func(field, v string) bool) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if walkValues(k, e, f) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if walkValues(field, e, f) {
				return true
			}
		}
	case string:
		return f(field, x)
	}
	return false
}

// requestsFor builds requests from the values the policies name (so rules
// actually match), mixed with random ones.
func requestsFor(objs []api.Object, g gen, n int) []rbac.Request {
	vals := map[string][]string{}
	anyValue(objs, func(field, v string) bool {
		vals[field] = append(vals[field], v)
		return false
	})
	concrete := func(v string) string { return strings.NewReplacer("{**}", "a/b", "{*}", "a", "*", "x").Replace(v) }
	pickOf := func(field string, fallback ...string) string {
		vs := vals[field]
		if len(vs) == 0 || g.r.IntN(4) == 0 {
			return g.pick(fallback...)
		}
		return concrete(vs[g.r.IntN(len(vs))])
	}
	ipOf := func(field string, fallback string) string {
		v := pickOf(field, fallback)
		if p, err := netip.ParsePrefix(v); err == nil {
			return p.Addr().String()
		}
		return v
	}
	var out []rbac.Request
	for i := 0; i < n; i++ {
		r := g.request()
		switch g.r.IntN(3) {
		case 0:
			r.Principal = "spiffe://" + pickOf("principals", "cluster.local/ns/a/sa/x")
		case 1:
			r.Principal = "spiffe://cluster.local/ns/" + pickOf("namespaces", "a") + "/sa/" + g.pick("x", "sleep", "y")
		}
		if g.r.IntN(5) == 0 {
			r.Principal = ""
		}
		r.Path = pickOf("paths", "/x", "/api/1/items")
		if !strings.HasPrefix(r.Path, "/") {
			r.Path = "/" + r.Path
		}
		r.Method = pickOf("methods", "GET", "POST")
		r.Host = pickOf("hosts", "flaskapp.default")
		r.SourceIP = ipOf("ipBlocks", "10.1.2.3")
		r.RemoteIP = ipOf("remoteIpBlocks", r.SourceIP)
		if rp := pickOf("requestPrincipals", ""); rp != "" {
			iss, sub := rp, ""
			if k := strings.LastIndex(rp, "/"); k >= 0 {
				iss, sub = rp[:k], rp[k+1:]
			}
			if r.JWT == nil {
				r.JWT = map[string]any{}
			}
			r.JWT["iss"], r.JWT["sub"] = iss, sub
		}
		out = append(out, r)
	}
	return out
}

type diffStats struct {
	cases, policies, decisions, explained, allowed int
	byDifference                                   map[string]int
}

// compareCase decides the requests with both outputs; a disagreement no
// known difference explains is an error.
func compareCase(t *testing.T, c oracleCase, res oracleResult, g gen, st *diffStats) {
	t.Helper()
	if res.Error != "" {
		return // Istio refuses the input: counted by the caller
	}
	w, objs, err := wardenOutput(c)
	if err != nil {
		t.Errorf("%s: Istio builds it, warden refuses: %v\n%s", c.ID, err, c.YAML)
		return
	}
	i, err := istioOutput(res)
	if err != nil {
		t.Fatalf("%s: Istio's filters: %v", c.ID, err)
	}
	st.cases++
	st.policies += len(objs)
	for _, r := range requestsFor(objs, g, 24) {
		wd, _ := w.Explain(r)
		id, _ := i.Explain(r)
		st.decisions++
		if wd.Allowed {
			st.allowed++
		}
		if wd.Allowed == id.Allowed {
			continue
		}
		explained := false
		for _, d := range knownDifferences {
			if d.applies(c, objs) {
				st.byDifference[d.name]++
				explained = true
				break
			}
		}
		if explained {
			st.explained++
			continue
		}
		wy, _ := w.YAML()
		t.Errorf("%s: request %+v: warden %s, Istio %s\n--- policies:\n%s\n--- warden:\n%s\n--- istio:\n%s", c.ID, r, wd, id, c.YAML, wy, res.Filters)
		return
	}
}

func TestIstioDecidesAlike(t *testing.T) {
	bin := testkit.IstioOracle(t)
	st := &diffStats{byDifference: map[string]int{}}

	// Istio's own builder golden inputs, with its test's workload.
	list, err := exec.Command(bin, "-list-istio-golden", filepath.Join(filepath.Dir(bin), "istio-golden")).Output()
	if err != nil {
		t.Fatalf("istioauthz -list-istio-golden: %v", err)
	}
	var golden []oracleCase
	for _, line := range bytes.Split(bytes.TrimSpace(list), []byte("\n")) {
		var c oracleCase
		if err := json.Unmarshal(line, &c); err != nil {
			t.Fatal(err)
		}
		golden = append(golden, c)
	}
	if len(golden) < 25 {
		t.Fatalf("%d Istio golden inputs, expected Istio's builder testdata", len(golden))
	}
	g := newGen([]byte("istio-golden"))
	refused := 0
	for k, r := range askIstio(t, golden) {
		if r.Error != "" {
			refused++
			continue
		}
		compareCase(t, golden[k], r, g, st)
	}
	goldenCases := st.cases

	// A generated corpus over every field, action, wildcard and not-form.
	var gen []oracleCase
	policies := 0
	for i := 0; policies < 10000; i++ {
		g := newGen([]byte(fmt.Sprintf("corpus-%d", i)))
		objs := g.policies(1 + g.r.IntN(3))
		policies += len(objs)
		var docs []string
		for _, o := range objs {
			b, err := yaml.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, string(b))
		}
		c := oracleCase{ID: fmt.Sprintf("gen-%d", i), YAML: strings.Join(docs, "---\n"), Namespace: "default",
			Labels: map[string]string{"app": g.pick("flaskapp", "sleep")}, TCP: g.r.IntN(5) == 0}
		if g.r.IntN(4) == 0 {
			c.TrustDomain, c.TrustDomainAliases = "new.td", []string{"cluster.local", "other.td"}
		}
		gen = append(gen, c)
	}
	genRefused := 0
	for k, r := range askIstio(t, gen) {
		if r.Error != "" {
			genRefused++
			if genRefused <= 3 {
				t.Errorf("Istio refuses generated case %s: %s\n%s", gen[k].ID, r.Error, gen[k].YAML)
			}
			continue
		}
		compareCase(t, gen[k], r, newGen([]byte(gen[k].ID)), st)
	}
	var diffs []string
	for d, n := range st.byDifference {
		diffs = append(diffs, fmt.Sprintf("%s: %d", d, n))
	}
	sort.Strings(diffs)
	t.Logf("Istio golden inputs: %d compared (%d refused by Istio's validation); generated: %d cases; %d policies in all; %d decisions compared (%d allowed by warden); %d explained by listed differences %v; 0 unexplained",
		goldenCases, refused, st.cases-goldenCases, st.policies, st.decisions, st.allowed, st.explained, diffs)
	if st.allowed < st.decisions/10 || st.allowed > st.decisions*9/10 {
		t.Errorf("the request table decided %d of %d allowed: too one-sided to tell compilers apart", st.allowed, st.decisions)
	}

	// The list the test knows is the list the docs give.
	doc, err := os.ReadFile(filepath.Join("..", "docs", "policy-authz.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Differences from Istio")
	if !ok {
		t.Fatal(`docs/policy-authz.md has no "## Differences from Istio" section`)
	}
	for _, d := range knownDifferences {
		if !strings.Contains(section, "- **"+d.name) {
			t.Errorf("docs/policy-authz.md's differences do not list %q", d.name)
		}
	}
}
