package rbac_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/rbac"
)

// TestFederatedPrincipals: principals and trust domains of a foreign
// (federated) trust domain compile to exactly what they name, whatever
// the mesh's trust domain and aliases: a trust domain alias rewrites only
// the local trust domain's principals, never a foreign one's, and a
// federated "cluster.local" keeps its own principals beside Istio's
// local reading of them (a DENY naming them still denies the foreign
// peer).
func TestFederatedPrincipals(t *testing.T) {
	t.Parallel()
	const policies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-foreign, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/bad/sa/x]}}]
  - from: [{source: {principals: [partner.test/ns/bad/sa/x]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: partners, namespace: default}
spec:
  rules:
  - from: [{source: {principals: [partner.test/ns/shop/sa/client]}}]
    to: [{operation: {paths: [/shop]}}]
  - from: [{source: {trustDomains: [partner.test], notPrincipals: [partner.test/ns/shop/sa/client]}}]
    to: [{operation: {paths: [/public]}}]
  - from: [{source: {principals: [mesh.test/ns/default/sa/local]}}]
  - when: [{key: source.principal, values: [cluster.local/ns/ops/sa/admin]}]
  - from: [{source: {trustDomains: [cluster.local]}}]
    to: [{operation: {paths: [/cl]}}]
`
	opts := rbac.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.test"), TrustDomainAliases: []string{"old.test"},
		FederatedTrustDomains: []string{"partner.test", "cluster.local"}}
	out, err := rbac.Compile(decodeAll(t, policies), rbac.Workload{Namespace: "default"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		principal, path string
		allowed         bool
	}{
		{"spiffe://partner.test/ns/shop/sa/client", "/shop", true},
		{"spiffe://partner.test/ns/shop/sa/client", "/public", false}, // notPrincipals
		{"spiffe://partner.test/ns/other/sa/y", "/public", true},      // trustDomains
		{"spiffe://partner.test/ns/other/sa/y", "/shop", false},
		// Not rewritten to the local trust domain or its alias.
		{"spiffe://mesh.test/ns/shop/sa/client", "/shop", false},
		{"spiffe://old.test/ns/shop/sa/client", "/shop", false},
		{"spiffe://mesh.test/ns/other/sa/y", "/public", false},
		// A local principal still covers the aliases, not a federated trust domain.
		{"spiffe://old.test/ns/default/sa/local", "/x", true},
		{"spiffe://partner.test/ns/default/sa/local", "/x", false},
		// cluster.local: the local workload (Istio) and the federated one.
		{"spiffe://mesh.test/ns/ops/sa/admin", "/x", true},
		{"spiffe://cluster.local/ns/ops/sa/admin", "/x", true},
		{"spiffe://cluster.local/ns/good/sa/x", "/cl", true},
		{"spiffe://cluster.local/ns/bad/sa/x", "/cl", false},
		{"spiffe://mesh.test/ns/bad/sa/x", "/x", false},
		{"spiffe://partner.test/ns/bad/sa/x", "/public", false},
	}
	for _, tc := range cases {
		d, err := out.Explain(rbac.Request{Principal: tc.principal, Method: "GET", Path: tc.path})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != tc.allowed {
			t.Errorf("%s %s: %s, want allowed=%v", tc.principal, tc.path, d, tc.allowed)
		}
	}
}

// TestCheckReportsUnknownTrustDomain: a policy value naming a trust
// domain that is none of the mesh's, its aliases, cluster.local and the
// federated ones never matches (no peer presents it); Check says so, and
// says which principals naming a federated cluster.local match two
// workloads.
func TestCheckReportsUnknownTrustDomain(t *testing.T) {
	t.Parallel()
	const where = "AuthorizationPolicy default/p rule 0: "
	const policy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [partner.tset/ns/a/sa/b, partner.test/ns/a/sa/b, mesh.test/ns/a/sa/b, old.test/ns/a/sa/b, "*.test/ns/a/sa/b", "*"],
                     notTrustDomains: [partner.test, "partner*", other.test]}}]
    when: [{key: source.principal, notValues: [cluster.local/ns/a/sa/b]}, {key: source.trustDomain, values: [nowhere.test]}]
`
	objs := decodeAll(t, policy)
	base := rbac.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.test"), TrustDomainAliases: []string{"old.test"}}
	unknown := func(field, v, td string) string {
		return where + field + `: "` + v + `" names trust domain "` + td + `", which is neither the mesh's (mesh.test), an alias, nor a federated trust domain: no peer presents it, so the value never matches; check its spelling, or federate with ` + td + ` (serve --federation-file, or a ClusterFederatedTrustDomain in Kubernetes)`
	}
	cases := []struct {
		name      string
		federated []string
		want      []string
	}{
		{"federated", []string{"partner.test"}, []string{
			unknown("source.principals", "partner.tset/ns/a/sa/b", "partner.tset"),
			unknown("source.notTrustDomains", "other.test", "other.test"),
			unknown("when[1].source.trustDomain values", "nowhere.test", "nowhere.test"),
		}},
		{"not federated", nil, []string{
			unknown("source.principals", "partner.tset/ns/a/sa/b", "partner.tset"),
			unknown("source.principals", "partner.test/ns/a/sa/b", "partner.test"),
			unknown("source.notTrustDomains", "partner.test", "partner.test"),
			unknown("source.notTrustDomains", "other.test", "other.test"),
			unknown("when[1].source.trustDomain values", "nowhere.test", "nowhere.test"),
		}},
		{"federated cluster.local", []string{"partner.test", "other.test", "nowhere.test", "partner.tset", "cluster.local"}, []string{
			where + `when[0].source.principal notValues: "cluster.local/ns/a/sa/b" matches both the local workload (Istio reads cluster.local as the mesh's trust domain, mesh.test) and the federated trust domain cluster.local's; to name the local one alone write "mesh.test/ns/a/sa/b"`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := base
			opts.FederatedTrustDomains = tc.federated
			if got := rbac.Check(objs, opts); !slices.Equal(got, tc.want) {
				t.Fatalf("Check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
