package meshconfig

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/fake"
	clienttesting "k8s.io/client-go/testing"
)

// TestServedKinds: the kinds an API server with Istio's CRDs serves are
// watched in the first version it serves (storage first, then newest: an
// older Istio serves security v1beta1 and networking v1alpha3 only), and
// the legacy kinds it lacks are named, not waited for. (A fake discovery
// client: TestInIstiodsPlace has a real API server with Istio's CRDs.)
func TestServedKinds(t *testing.T) {
	t.Parallel()
	list := func(gv string, plurals ...string) *metav1.APIResourceList {
		l := &metav1.APIResourceList{GroupVersion: gv}
		for _, p := range plurals {
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: p})
		}
		return l
	}
	d := &fake.FakeDiscovery{Fake: &clienttesting.Fake{Resources: []*metav1.APIResourceList{
		list("security.istio.io/v1beta1", "peerauthentications", "requestauthentications", "authorizationpolicies"),
		list("networking.istio.io/v1alpha3", "virtualservices", "destinationrules", "serviceentries", "gateways", "sidecars", "envoyfilters"),
		list("networking.istio.io/v1beta1", "virtualservices", "destinationrules", "serviceentries", "gateways", "sidecars"),
	}}}
	served, missing := (&Watcher{Discovery: d}).served()
	var got []string
	for _, gvr := range served {
		got = append(got, gvr.Resource+"."+gvr.Group+"/"+gvr.Version)
	}
	want := "peerauthentications.security.istio.io/v1beta1 requestauthentications.security.istio.io/v1beta1 authorizationpolicies.security.istio.io/v1beta1 " +
		"virtualservices.networking.istio.io/v1beta1 destinationrules.networking.istio.io/v1beta1 serviceentries.networking.istio.io/v1beta1 " +
		"gateways.networking.istio.io/v1beta1 sidecars.networking.istio.io/v1beta1"
	if strings.Join(got, " ") != want {
		t.Errorf("served\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
	if n := kindNames(missing); n != "policies.authentication.istio.io, meshpolicies.authentication.istio.io, serviceroles.rbac.istio.io, servicerolebindings.rbac.istio.io, clusterrbacconfigs.rbac.istio.io, rbacconfigs.rbac.istio.io" {
		t.Errorf("missing %s", n)
	}
	if served, missing := (&Watcher{}).served(); len(served) != 14 || len(missing) != 0 {
		t.Errorf("without discovery: %d served, %d missing", len(served), len(missing))
	}
}
