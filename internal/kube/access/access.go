// Package access says what warden serve --kubernetes does in the API
// server (Required), and asks the API server, with SubjectAccessReviews,
// whether a service account may do it (Check), for warden check: an
// install whose RBAC lacks a rule fails at that rule's work (every
// workload refused for want of tokenreviews), not at start.
package access

import (
	"context"
	"fmt"
	"strings"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/check"
)

// Rule is one kind of request serve makes.
type Rule struct {
	Verbs    []string
	Group    string
	Resource string
	// Subresource, when set, is the part of Resource asked for
	// ("status").
	Subresource string
	Name        string // one object, or every one
	Namespace   string // the install's namespace, or every one ("")
	// Fails is what goes wrong without it.
	Fails string
	// Grant is the manifest that grants it (default
	// deploy/warden/rbac.yaml).
	Grant string
}

// String is the rule as kubectl auth can-i takes it.
func (r Rule) String() string {
	res := r.Resource
	if r.Group != "" {
		res += "." + r.Group
	}
	if r.Name != "" {
		res += "/" + r.Name
	}
	if r.Subresource != "" {
		res += " --subresource=" + r.Subresource
	}
	where := " in every namespace"
	if r.Namespace != "" {
		where = " in namespace " + r.Namespace
	}
	if cluster[r.Resource] {
		where = ""
	}
	return strings.Join(r.Verbs, ", ") + " " + res + where
}

// cluster are the cluster-scoped resources among the rules.
var cluster = map[string]bool{"tokenreviews": true, "subjectaccessreviews": true, "namespaces": true, "signers": true, "clustertrustbundles": true, "nodes": true, "clusterfederatedtrustdomains": true}

// Required is what serve --kubernetes does, for an install in namespace
// ns (with --sa-secrets, saSecrets): deploy/warden/rbac.yaml (and
// deploy/sa-secrets) grant it.
func Required(ns string, saSecrets bool) []Rule {
	watch := []string{"list", "watch"}
	rules := []Rule{
		{Verbs: []string{"create"}, Group: "authentication.k8s.io", Resource: "tokenreviews", Fails: "every workload's token goes unchecked: certificate requests, SDS and xDS streams are answered Unavailable"},
		{Verbs: []string{"create", "update"}, Group: "coordination.k8s.io", Resource: "leases", Name: "warden-leader", Namespace: ns, Fails: "no replica can lead: the trust bundle is not published and a root rotation does not advance"},
		{Verbs: []string{"get"}, Group: "coordination.k8s.io", Resource: "leases", Name: "warden-leader", Namespace: ns, Fails: "no replica can lead: the trust bundle is not published and a root rotation does not advance"},
		{Verbs: []string{"get"}, Resource: "secrets", Name: "istio-ca-secret", Namespace: ns, Fails: "a replica cannot read the CA and does not start"},
		{Verbs: []string{"get"}, Resource: "secrets", Name: "cacerts", Namespace: ns, Fails: "a replica cannot read the plugged-in CA and does not start"},
		{Verbs: []string{"create"}, Resource: "secrets", Namespace: ns, Fails: "the first replica cannot store the CA it creates, and a root rotation cannot prepare"},
		{Verbs: []string{"update"}, Resource: "secrets", Name: "istio-ca-secret", Namespace: ns, Fails: "a root rotation cannot retire"},
		{Verbs: []string{"get", "delete"}, Resource: "secrets", Name: "warden-ca-next", Namespace: ns, Fails: "a root rotation cannot proceed"},
		{Verbs: []string{"get", "update", "delete"}, Resource: "configmaps", Name: "warden-ca-rotation", Namespace: ns, Fails: "a root rotation cannot be requested or followed"},
		{Verbs: []string{"get", "update"}, Resource: "configmaps", Name: "warden-ca-source", Namespace: ns, Fails: "a plugged-in CA cannot be recorded, and is not activated"},
		{Verbs: []string{"create", "update", "delete"}, Resource: "configmaps", Name: "warden-ca-rotation-<replica>", Namespace: ns, Fails: "a replica cannot report its streams during a root rotation, which then waits for it"},
		{Verbs: watch, Resource: "namespaces", Fails: "the trust bundle is not published"},
		{Verbs: watch, Resource: "configmaps", Fails: "the trust bundle is not published"},
		{Verbs: []string{"create"}, Resource: "configmaps", Fails: "istio-ca-root-cert is not created in new namespaces"},
		{Verbs: []string{"update"}, Resource: "configmaps", Name: "istio-ca-root-cert", Fails: "istio-ca-root-cert is not repaired or updated, and a root rotation never activates"},
		{Verbs: watch, Resource: "secrets", Fails: "gateways get no credentialName certificates, and the CA's Secrets are not followed"},
		{Verbs: []string{"create"}, Group: "authorization.k8s.io", Resource: "subjectaccessreviews", Fails: "gateways get no credentialName certificates"},
		{Verbs: watch, Resource: "services", Fails: "the xDS service registry stays empty"},
		{Verbs: watch, Resource: "pods", Fails: "the xDS service registry has no workloads, a root rotation does not see the replicas, and node proxies (ztunnel) get no certificates for their pods"},
		{Verbs: watch, Group: "discovery.k8s.io", Resource: "endpointslices", Fails: "the xDS service registry has no endpoints"},
	}
	for _, k := range api.Kinds {
		rules = append(rules, Rule{Verbs: watch, Group: k.Group, Resource: k.Plural, Fails: k.Kind + " objects are not applied"})
	}
	rules = append(rules,
		Rule{Verbs: watch, Group: "federation.wardenmesh.io", Resource: "clusterfederatedtrustdomains", Fails: "ClusterFederatedTrustDomain objects are not applied: only --federation-file's relationships are"},
		Rule{Verbs: []string{"update"}, Group: "federation.wardenmesh.io", Resource: "clusterfederatedtrustdomains", Subresource: "status", Fails: "ClusterFederatedTrustDomain objects get no Accepted condition: a refused one says nothing in kubectl get"},
	)
	if saSecrets {
		rules = append(rules,
			Rule{Verbs: watch, Resource: "serviceaccounts", Fails: "no istio.<sa> Secret is written", Grant: "deploy/sa-secrets"},
			Rule{Verbs: []string{"create", "update", "delete"}, Resource: "secrets", Fails: "istio.<sa> Secrets are not written", Grant: "deploy/sa-secrets"},
		)
	}
	return rules
}

// PodCertificates is what the pod-certificate signer does, for signer
// name signer and its ClusterTrustBundle ctb (docs/pod-certificates.md):
// deploy/warden/rbac.yaml grants it for wardenmesh.io/spiffe and trust
// domain cluster.local.
func PodCertificates(signer, ctb string) []Rule {
	const certs = "certificates.k8s.io"
	watch := []string{"list", "watch"}
	waits := "pods that mount a podCertificate volume for " + signer + " wait for ever"
	return []Rule{
		{Verbs: watch, Group: certs, Resource: "podcertificaterequests", Fails: "pod certificate requests are not seen: " + waits},
		{Verbs: []string{"update"}, Group: certs, Resource: "podcertificaterequests", Subresource: "status", Fails: "no pod certificate is issued or denied: " + waits},
		{Verbs: []string{"sign"}, Group: certs, Resource: "signers", Name: signer, Fails: "the API server refuses every status warden writes (a 422): " + waits},
		{Verbs: []string{"attest"}, Group: certs, Resource: "signers", Name: signer, Fails: "ClusterTrustBundle " + ctb + " cannot be written: pods mounting it get no roots"},
		{Verbs: append(watch, "create"), Group: certs, Resource: "clustertrustbundles", Fails: "ClusterTrustBundle " + ctb + " is not created"},
		{Verbs: []string{"update"}, Group: certs, Resource: "clustertrustbundles", Name: ctb, Fails: "ClusterTrustBundle " + ctb + " is not updated, and a root rotation never activates"},
		{Verbs: watch, Resource: "serviceaccounts", Fails: "pod certificate requests cannot be checked against their service account: " + waits},
		{Verbs: watch, Resource: "nodes", Fails: "pod certificate requests cannot be checked against their node: " + waits},
	}
}

// Check asks, for each rule, whether service account sa of namespace
// saNS may do it: an error for each it may not, one ok when it may do
// them all, a warning when the checker may not ask.
func Check(ctx context.Context, cs kubernetes.Interface, saNS, sa string, rules []Rule) []check.Result {
	user := "system:serviceaccount:" + saNS + ":" + sa
	var out []check.Result
	asked := 0
	for _, r := range rules {
		for _, verb := range r.Verbs {
			name := r.Name
			if strings.HasSuffix(name, ">") {
				name = "" // a family of names: ask for any
			}
			sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User:   user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{
					Namespace: r.Namespace, Verb: verb, Group: r.Group, Resource: r.Resource, Subresource: r.Subresource, Name: name,
				},
			}}, metav1.CreateOptions{})
			if err != nil {
				return []check.Result{{Check: "rbac", Status: check.Warn, Message: fmt.Sprintf("could not ask what service account %s/%s may do: %v (warden check needs to create subjectaccessreviews.authorization.k8s.io)", saNS, sa, err)}}
			}
			asked++
			if !sar.Status.Allowed {
				one := r
				one.Verbs = []string{verb}
				grant := r.Grant
				if grant == "" {
					grant = "deploy/warden/rbac.yaml"
				}
				out = append(out, check.Result{Check: "rbac", Status: check.Error, Message: fmt.Sprintf("service account %s/%s may not %s: %s (%s grants it)", saNS, sa, one, r.Fails, grant)})
			}
		}
	}
	if len(out) == 0 {
		out = append(out, check.Result{Check: "rbac", Status: check.OK, Message: fmt.Sprintf("service account %s/%s may do the %d things warden serve does", saNS, sa, asked)})
	}
	return out
}
