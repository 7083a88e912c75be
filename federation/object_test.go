package federation_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/federation"
)

// TestParseSpec: a ClusterFederatedTrustDomain's spec is a file entry
// (the same validation, the same messages), except what an object cannot
// carry, each refused by name: SPIRE's className, a bundle file, and no
// namespaces.
func TestParseSpec(t *testing.T) {
	t.Parallel()
	r, err := federation.ParseSpec([]byte(`{"trustDomain":"partner.test","bundleEndpointURL":"https://bundles.partner.test/","bundleEndpointProfile":{"type":"https_web"},"namespaces":["payments"]}`), local)
	if err != nil {
		t.Fatal(err)
	}
	if r.TrustDomain.String() != "partner.test" || r.Profile != federation.HTTPSWeb || r.URL != "https://bundles.partner.test/" || !r.Federates("payments") || r.Federates("default") {
		t.Errorf("ParseSpec: %+v", r)
	}
	const web = `"bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_web"}`
	for _, c := range []struct{ spec, want string }{
		{`{"trustDomain":"a.test",` + web + `,"namespaces":["*"],"className":"spire-mgmt"}`, "className: warden has no controller classes (SPIRE's className picks which spire-controller-manager reconciles the object); every warden replica reads every object: remove className"},
		{`{"trustDomain":"a.test","bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_spiffe","endpointSPIFFEID":"spiffe://a.test/s"},"namespaces":["*"],"trustDomainBundleFile":"b.pem"}`, "trustDomainBundleFile: an object carries its bootstrap bundle inline: put the bundle (SPIFFE bundle JSON or PEM roots) in trustDomainBundle"},
		{`{"trustDomain":"a.test",` + web + `}`, `no namespaces: name the namespaces whose workloads federate with the trust domain (["*"] for every namespace, [] for none)`},
		{`{"trustDomain":"a.test",` + web + `,"namespaces":["*"],"federatesWith":["b.test"]}`, `error unmarshaling JSON: while decoding JSON: json: unknown field "federatesWith"`},
		// The file entry's own refusals, through the same function.
		{`{"trustDomain":"cluster.local",` + web + `,"namespaces":["*"]}`, "trustDomain cluster.local is warden's own: a relationship names a foreign trust domain"},
		{`{"trustDomain":"a.test","bundleEndpointURL":"http://x/","bundleEndpointProfile":{"type":"https_web"},"namespaces":["*"]}`, `bundleEndpointURL: "http://x/": a bundle endpoint URL is https`},
		{`{"trustDomain":"a.test",` + web + `,"namespaces":["*"],"trustDomainBundle":"x"}`, "trustDomainBundle is for https_spiffe; an https_web endpoint needs no bootstrap bundle"},
		{`{"trustDomain":"a.test","bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_spiffe","endpointSPIFFEID":"spiffe://a.test/s"},"namespaces":["*"]}`, "the endpoint spiffe://a.test/s serves its own trust domain's bundle: give trustDomainBundle or trustDomainBundleFile to authenticate the first fetch"},
		{`{"trustDomain":"a.test","bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_sp1ffe"},"namespaces":["*"]}`, `bundleEndpointProfile.type "https_sp1ffe": want https_web or https_spiffe`},
	} {
		_, err := federation.ParseSpec([]byte(c.spec), local)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.spec, err, c.want)
		}
	}
}

func rel(t *testing.T, td, url string, namespaces ...string) *federation.Relationship {
	t.Helper()
	r, err := federation.ParseSpec([]byte(`{"trustDomain":"`+td+`","bundleEndpointURL":"`+url+`","bundleEndpointProfile":{"type":"https_web"},"namespaces":["`+namespaces[0]+`"]}`), local)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestCombine: objects join the file's relationships in order; one that
// names a trust domain already named, or reuses an endpoint, is refused by
// name and the others stay; a refused edit keeps the previous version in
// effect; an endpoint in a trust domain only a refused object named is
// refused too.
func TestCombine(t *testing.T) {
	t.Parallel()
	file := []*federation.Relationship{rel(t, "file.test", "https://file/", "*")}
	spiffeRel := func(td, url, endpoint string) *federation.Relationship {
		r, err := federation.ParseSpec([]byte(`{"trustDomain":"`+td+`","bundleEndpointURL":"`+url+`","bundleEndpointProfile":{"type":"https_spiffe","endpointSPIFFEID":"`+endpoint+`"},"namespaces":["*"]}`), local)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	aOld, aNew := rel(t, "a.test", "https://a/", "default"), rel(t, "file.test", "https://a2/", "default")
	cands := []federation.Candidate{
		{Name: "a", Current: aNew, Previous: aOld},                                                   // edited onto the file's trust domain: the previous stays
		{Name: "b", Current: rel(t, "a.test", "https://b/", "default")},                              // a.test taken by a's previous version
		{Name: "c", Current: rel(t, "c.test", "https://file/", "default")},                           // the file's endpoint
		{Name: "d", Invalid: errors.New("spec: bad"), Previous: rel(t, "d.test", "https://d/", "x")}, // does not parse now
		{Name: "e", Current: rel(t, "e.test", "https://e/", "default")},
		{Name: "f", Current: spiffeRel("f.test", "https://f/", "spiffe://b.test/server")},   // b.test: nobody
		{Name: "g", Current: spiffeRel("g.test", "https://g/", "spiffe://e.test/server")},   // e.test: object e
		{Name: "h", Current: spiffeRel("h.test", "https://h/", "spiffe://cluster.local/x")}, // local
	}
	rels, outs := federation.Combine(local, file, cands)
	var names []string
	for _, r := range rels {
		names = append(names, r.TrustDomain.String())
	}
	if want := []string{"file.test", "a.test", "d.test", "e.test", "g.test", "h.test"}; !slices.Equal(names, want) {
		t.Errorf("in effect %v, want %v", names, want)
	}
	want := []struct {
		inEffect string
		err      string
	}{
		{"a.test", "trustDomain file.test is already named by the federation file: one relationship per trust domain; delete this object or remove the other"},
		{"", "trustDomain a.test is already named by ClusterFederatedTrustDomain a: one relationship per trust domain; delete this object or remove the other"},
		{"", "bundleEndpointURL https://file/ also serves file.test's bundle: a bundle endpoint serves one trust domain, give each trust domain its own endpoint"},
		{"d.test", "spec: bad"},
		{"e.test", ""},
		{"", "the endpoint spiffe://b.test/server is in trust domain b.test, which no relationship names: add one for it (or use the endpoint's own trust domain)"},
		{"g.test", ""},
		{"h.test", ""},
	}
	for i, o := range outs {
		got := ""
		if o.InEffect != nil {
			got = o.InEffect.TrustDomain.String()
		}
		gotErr := ""
		if o.Err != nil {
			gotErr = o.Err.Error()
		}
		if o.Name != cands[i].Name || got != want[i].inEffect || gotErr != want[i].err {
			t.Errorf("%s: in effect %q, error %q; want %q, %q", o.Name, got, gotErr, want[i].inEffect, want[i].err)
		}
	}

	// The trust domain an endpoint is in goes: so does the relationship
	// that needs it, in the same pass.
	_, outs = federation.Combine(local, nil, []federation.Candidate{
		{Name: "e", Current: rel(t, "cluster.local.x", "https://e/", "default")},
		{Name: "g", Current: spiffeRel("g.test", "https://g/", "spiffe://e.test/server")},
	})
	if outs[1].InEffect != nil || outs[1].Err == nil {
		t.Errorf("g without e.test: %+v", outs[1])
	}
	if _, outs = federation.Combine(local, nil, []federation.Candidate{{Name: "own", Current: &federation.Relationship{TrustDomain: local, URL: "https://own/"}}}); outs[0].InEffect != nil {
		t.Errorf("the local trust domain taken: %+v", outs[0])
	}
}

// FuzzParseSpec: no object spec makes ParseSpec panic, and what it takes
// is a foreign trust domain with an https endpoint.
func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(`{"trustDomain":"a.test","bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_web"},"namespaces":["*"]}`))
	f.Add([]byte(`{"trustDomain":"a.test","bundleEndpointURL":"https://x/","bundleEndpointProfile":{"type":"https_spiffe","endpointSPIFFEID":"spiffe://b.test/s"},"namespaces":["a"],"className":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := federation.ParseSpec(b, local)
		if err != nil {
			return
		}
		if r.TrustDomain == local || r.TrustDomain.IsZero() || r.Namespaces == nil {
			t.Fatalf("took %+v", r)
		}
	})
}

// TestParseObjects: ClusterFederatedTrustDomain objects as kubectl writes
// them (a List, or YAML documents; metadata and status the API server's)
// are read as a replica takes them; anything a replica would refuse, or
// that is not one of these objects, is an error naming it.
func TestParseObjects(t *testing.T) {
	obj := func(name, td, url string) string {
		return `apiVersion: federation.wardenmesh.io/v1alpha1
kind: ClusterFederatedTrustDomain
metadata: {name: ` + name + `, uid: 0a1b, resourceVersion: "7", generation: 2}
spec:
  trustDomain: ` + td + `
  bundleEndpointURL: ` + url + `
  bundleEndpointProfile: {type: https_web}
  namespaces: [shop]
status: {conditions: [{type: Accepted, status: "True"}]}
`
	}
	indent := func(s string) string {
		return "- " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
	}
	list := "apiVersion: v1\nkind: List\nitems:\n" + indent(obj("b", "b.test", "https://b/")) + indent(obj("a", "a.test", "https://a/"))
	cases := []struct {
		name, doc, want, err string
	}{
		{"list", list, "a.test b.test", ""},
		{"documents", obj("b", "b.test", "https://b/") + "---\n" + obj("a", "a.test", "https://a/"), "a.test b.test", ""},
		{"one", obj("a", "a.test", "https://a/"), "a.test", ""},
		{"same trust domain twice", obj("b", "a.test", "https://b/") + "---\n" + obj("a", "a.test", "https://a/"),
			"", "ClusterFederatedTrustDomain b is refused: trustDomain a.test is already named by ClusterFederatedTrustDomain a"},
		{"local", obj("a", "cluster.local", "https://a/"), "", "ClusterFederatedTrustDomain a is refused: trustDomain cluster.local is warden's own"},
		{"another kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "", "document 1: v1 ConfigMap: want apiVersion federation.wardenmesh.io/v1alpha1, kind ClusterFederatedTrustDomain"},
		{"no name", strings.Replace(obj("a", "a.test", "https://a/"), "name: a, ", "", 1), "", "document 1: ClusterFederatedTrustDomain without metadata.name"},
		{"bad spec", strings.Replace(obj("a", "a.test", "https://a/"), "namespaces: [shop]", "namespaces: [shop]\n  className: x", 1), "", "ClusterFederatedTrustDomain a is refused: className"},
	}
	for _, tc := range cases {
		rels, err := federation.ParseObjects([]byte(tc.doc), local)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, r := range rels {
			got = append(got, r.TrustDomain.Name())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, got, tc.want)
		}
	}
}

// FuzzParseObjects: whatever the document, ParseObjects neither panics
// nor takes the local trust domain, nor one trust domain twice.
func FuzzParseObjects(f *testing.F) {
	f.Add([]byte("apiVersion: federation.wardenmesh.io/v1alpha1\nkind: ClusterFederatedTrustDomain\nmetadata: {name: a}\nspec: {trustDomain: a.test, bundleEndpointURL: 'https://a/', bundleEndpointProfile: {type: https_web}, namespaces: ['*']}\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: federation.wardenmesh.io/v1alpha1, kind: ClusterFederatedTrustDomain, metadata: {name: a}, spec: {}}]\n---\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rels, err := federation.ParseObjects(b, local)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, r := range rels {
			if r.TrustDomain == local || seen[r.TrustDomain.Name()] {
				t.Fatalf("took %s", r.TrustDomain)
			}
			seen[r.TrustDomain.Name()] = true
		}
	})
}

// TestParseRefusesObjects: the relationships file (serve's) is not the
// objects' form; the error says where objects go.
func TestParseRefusesObjects(t *testing.T) {
	_, err := federation.Parse([]byte("apiVersion: federation.wardenmesh.io/v1alpha1\nkind: ClusterFederatedTrustDomain\nmetadata: {name: a}\nspec: {}\n"), "", local)
	if err == nil || !strings.Contains(err.Error(), "this is a ClusterFederatedTrustDomain document, not the relationships file (trustDomains, caCertificates): serve reads ClusterFederatedTrustDomain objects from the API server") {
		t.Fatalf("Parse of an object: %v", err)
	}
}
