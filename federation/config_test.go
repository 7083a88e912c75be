package federation_test

import (
	"slices"
	"testing"

	"github.com/wardenmesh/warden/federation"
)

// TestParseMeshCACertificates: Istio's meshConfig.caCertificates entries,
// as Istio writes them, beside the SPIRE form: spiffeBundleUrl with one
// trust domain is an https_web relationship; what Istio would merge into a
// flat pool is refused by name.
func TestParseMeshCACertificates(t *testing.T) {
	t.Parallel()
	good := `trustDomains:
- trustDomain: spire.test
  bundleEndpointURL: https://spire.test/bundle
  bundleEndpointProfile: {type: https_web}
  namespaces: [default]
caCertificates:
- spiffeBundleUrl: https://bundles.partner.test:8443/bundle
  trustDomains: [partner.test]
  namespaces: [default, payments]
- spiffeBundleUrl: web.test/.well-known/spiffe-bundle
  trustDomains: [web.test]
  namespaces: ["*"]
- spiffeBundleUrl: https://nobody.test/
  trustDomains: [nobody.test]
  namespaces: []
`
	rels, err := federation.Parse([]byte(good), t.TempDir(), local)
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 4 {
		t.Fatalf("%d relationships, want 4", len(rels))
	}
	p, w, n := rels[1], rels[2], rels[3]
	if p.TrustDomain.String() != "partner.test" || p.Profile != federation.HTTPSWeb || p.URL != "https://bundles.partner.test:8443/bundle" || !slices.Equal(p.Namespaces, []string{"default", "payments"}) || p.Bootstrap != nil {
		t.Errorf("partner.test: %+v", p)
	}
	if w.URL != "https://web.test/.well-known/spiffe-bundle" || !w.Federates("anything") {
		t.Errorf("web.test (no scheme, as Istio takes it: https): %+v", w)
	}
	if n.Federates("default") {
		t.Errorf("nobody.test with namespaces [] federates default")
	}

	const entry = "caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [a.test], namespaces: [default]"
	for _, c := range []struct{ doc, want string }{
		{"caCertificates: [{pem: '-----BEGIN CERTIFICATE-----', trustDomains: [a.test], namespaces: [default]}]", "caCertificates[0]: pem: warden adds no roots to a flat pool (Istio's caCertificates, istio/istio#30454): for a foreign trust domain give spiffeBundleUrl and trustDomains, or a trustDomains entry (https_spiffe) with the PEM as its trustDomainBundle"},
		{"caCertificates: [{pem: x, spiffeBundleUrl: 'https://x/'}]", "caCertificates[0]: pem and spiffeBundleUrl exclude each other (one of the two, as in Istio)"},
		{"caCertificates: [{trustDomains: [a.test], namespaces: [default]}]", "caCertificates[0]: no spiffeBundleUrl: give the URL of the foreign trust domain's bundle endpoint (https_web)"},
		{entry + ", certSigners: [clusterissuers.cert-manager.io/istio-ca]}]", "caCertificates[0]: certSigners: warden's CA signs every workload and is no registration authority for Kubernetes signers: remove certSigners"},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', namespaces: [default]}]", "caCertificates[0]: no trustDomains: Istio would trust the endpoint's roots for warden's own trust domain (a flat pool): name the one foreign trust domain whose bundle spiffeBundleUrl serves"},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [a.test, b.test], namespaces: [default]}]", "caCertificates[0]: trustDomains: 2 trust domains for one spiffeBundleUrl: a bundle endpoint serves one trust domain's bundle, and one bundle for several would let each one's CA sign for the others: write one entry per trust domain, each with its own endpoint"},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [a.test]}]", `caCertificates[0]: no namespaces: Istio trusts these roots in every workload, warden only in the namespaces listed: add namespaces (["*"] for every namespace)`},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [cluster.local], namespaces: [default]}]", "caCertificates[0]: trustDomains: cluster.local is warden's own: Istio would add the endpoint's roots to it (a flat pool); a relationship names a foreign trust domain"},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: ['A b'], namespaces: [default]}]", `caCertificates[0]: trustDomains: "A b": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{"caCertificates: [{spiffeBundleUrl: 'http://x/', trustDomains: [a.test], namespaces: [default]}]", `caCertificates[0]: spiffeBundleUrl: "http://x/": a bundle endpoint URL is https`},
		{"caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [a.test], namespaces: ['']}]", `caCertificates[0]: namespaces: an empty name (use "*" for every namespace)`},
		{entry + "}, {spiffeBundleUrl: 'https://y/', trustDomains: [a.test], namespaces: [default]}]", "caCertificates[1]: a.test is named twice: one relationship per trust domain"},
		{entry + "}, {spiffeBundleUrl: 'https://x/', trustDomains: [b.test], namespaces: [default]}]", "caCertificates[1]: https://x/ also serves a.test's bundle: a bundle endpoint serves one trust domain, give each trust domain its own endpoint"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}]\n" + entry + "}]", "caCertificates[0]: a.test is named twice: one relationship per trust domain"},
		{"trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}, {trustDomain: b.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}]", "trustDomains[1]: https://x/ also serves a.test's bundle: a bundle endpoint serves one trust domain, give each trust domain its own endpoint"},
		{entry + ", spiffe_bundle_url: 'https://x/'}]", `error unmarshaling JSON: while decoding JSON: json: unknown field "spiffe_bundle_url"`},
	} {
		_, err := federation.Parse([]byte(c.doc), t.TempDir(), local)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.doc, err, c.want)
		}
	}
}

// FuzzParse: no relationships document makes Parse panic, and what it
// takes names no trust domain twice.
func FuzzParse(f *testing.F) {
	f.Add([]byte("caCertificates: [{spiffeBundleUrl: 'https://x/', trustDomains: [a.test], namespaces: [default]}]"))
	f.Add([]byte("trustDomains: [{trustDomain: a.test, bundleEndpointURL: 'https://x/', bundleEndpointProfile: {type: https_web}}]"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		rels, err := federation.Parse(b, dir, local)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, r := range rels {
			if seen[r.TrustDomain.String()] || r.TrustDomain == local {
				t.Fatalf("trust domain %s taken twice or local", r.TrustDomain)
			}
			seen[r.TrustDomain.String()] = true
		}
	})
}
