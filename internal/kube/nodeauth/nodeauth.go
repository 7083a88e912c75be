// Package nodeauth lets node proxies (Istio ambient's ztunnel, one per
// node) ask the CA for the certificates of the pods on their node, under
// istiod's node authorization (istio/istio
// security/pkg/server/ca/node_auth.go and server.go): a caller asking
// for another identity in the request's ImpersonatedIdentity gets it
// only when, in istiod's order,
//
//  1. its clusterid header names the cluster warden authorizes;
//  2. its service account is a trusted node account (Istio's
//     CA_TRUSTED_NODE_ACCOUNTS, warden's --trusted-node-accounts);
//  3. the identity parses (and, warden's addition, is in warden's trust
//     domain);
//  4. the pod its token is bound to (the TokenReview's pod-name and
//     pod-uid extras) exists with that UID and service account;
//  5. at least one pod of the requested namespace and service account
//     runs on that pod's node (pods in phase Failed do not count).
//
// Every refusal is a server.Refusal: Unauthenticated to the caller, the
// whole reason logged. The pods come from an informer (Pods), as istiod
// asks its lister: a pod the watch has not delivered yet is refused, and
// ztunnel retries.
package nodeauth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca/server"
)

// Account is a Kubernetes service account, namespace/name.
type Account struct{ Namespace, Name string }

func (a Account) String() string { return a.Namespace + "/" + a.Name }

// DefaultTrusted is the default of --trusted-node-accounts: ztunnel as
// Istio's chart installs it (the value istiod's ambient profile sets
// CA_TRUSTED_NODE_ACCOUNTS to).
const DefaultTrusted = "istio-system/ztunnel"

// ParseAccounts reads a comma-separated list of namespace/serviceaccount
// (istiod's CA_TRUSTED_NODE_ACCOUNTS syntax); spaces around an entry are
// dropped. An empty list trusts no node account. Unlike istiod, which
// skips an entry without a '/' with a warning, a bad entry is an error.
func ParseAccounts(s string) ([]Account, error) {
	var out []Account
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		ns, sa, ok := strings.Cut(e, "/")
		if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			return nil, fmt.Errorf("nodeauth: trusted node account %q: want <namespace>/<service account>, e.g. %s", e, DefaultTrusted)
		}
		if a := (Account{ns, sa}); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// Reasons an impersonation is refused, in the order they are checked:
// the label of warden_ca_impersonations_refused_total and what the
// caller is told.
const (
	ReasonCluster     = "cluster"             // the clusterid header names no cluster warden authorizes
	ReasonUntrusted   = "untrusted"           // the caller is not a trusted node account's token
	ReasonIdentity    = "invalid_identity"    // the identity asked for does not parse
	ReasonTrustDomain = "trust_domain"        // the identity is outside warden's trust domain
	ReasonNotSynced   = "not_synced"          // the pods are not listed yet
	ReasonPodNotFound = "pod_not_found"       // the caller's pod is not running (deleted, Failed, or the token names none)
	ReasonPodUID      = "pod_uid"             // the caller's pod was recreated under the same name
	ReasonPodAccount  = "pod_service_account" // the caller's pod runs as another account
	ReasonNotOnNode   = "not_on_node"         // no pod of the identity runs on the caller's node
)

// Reasons lists every reason, for metrics.
var Reasons = []string{ReasonCluster, ReasonUntrusted, ReasonIdentity, ReasonTrustDomain, ReasonNotSynced,
	ReasonPodNotFound, ReasonPodUID, ReasonPodAccount, ReasonNotOnNode}

// Authorizer is server.Authorizer for Kubernetes mode: a caller's own
// identity as always, and another one under node authorization.
type Authorizer struct {
	// Trusted are the node accounts that may ask for other identities.
	Trusted []Account
	// Cluster is the ID of the cluster whose pods Pods watches (istiod's
	// CLUSTER_ID): the caller's clusterid header must name it.
	Cluster string
	// TrustDomain is the CA's: an identity outside it is refused.
	TrustDomain spiffeid.TrustDomain
	Pods        *Pods
	// Observe, when set, hears of every impersonation asked: reason ""
	// when allowed, else one of Reasons.
	Observe func(reason string)
}

var _ server.Authorizer = (*Authorizer)(nil)

// Authorize implements server.Authorizer. A request naming no identity,
// or the caller's own, is the caller's own request (as SelfOnly answers
// it).
func (a *Authorizer) Authorize(ctx context.Context, c *server.Caller, req *server.Request) (spiffeid.ID, error) {
	asked := req.Impersonated()
	if asked == "" || asked == c.ID.String() {
		return c.ID, nil
	}
	id, err := a.impersonate(ctx, c, asked)
	if a.Observe != nil {
		reason := ""
		if r := (*server.Refusal)(nil); errors.As(err, &r) {
			reason = r.Reason
		}
		a.Observe(reason)
	}
	return id, err
}

func refuse(reason, format string, args ...any) error {
	return &server.Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// impersonate checks in istiod's order (MulticlusterNodeAuthorizor, then
// ClusterNodeAuthorizer.authenticateImpersonation); the details keep
// istiod's wording where it has one, so its messages can be searched for.
func (a *Authorizer) impersonate(ctx context.Context, c *server.Caller, asked string) (spiffeid.ID, error) {
	if cluster := server.ClusterID(ctx); cluster != a.Cluster {
		named := fmt.Sprintf("cluster %q", cluster)
		if cluster == "" {
			named = "the request's cluster (it sent no clusterid header, or several)"
		}
		return spiffeid.ID{}, refuse(ReasonCluster, "%s asked for %q: no node authorizer for %s: warden authorizes the node proxies of one cluster, %q (--cluster-id), and the caller's clusterid header (its CLUSTER_ID) must name it", c.ID, asked, named, a.Cluster)
	}
	k := c.Kubernetes
	if k == nil {
		return spiffeid.ID{}, refuse(ReasonUntrusted, "caller %s, authenticated by %s, is not allowed to impersonate: only a trusted node account's Kubernetes service-account token may ask for another identity", c.ID, c.Method)
	}
	if !slices.Contains(a.Trusted, Account{k.Namespace, k.ServiceAccount}) {
		return spiffeid.ID{}, refuse(ReasonUntrusted, "caller %s/%s (pod %q) is not allowed to impersonate %q: it is not a trusted node account (--trusted-node-accounts)", k.Namespace, k.ServiceAccount, k.PodName, asked)
	}
	id, err := parseIdentity(asked)
	if err != nil {
		return spiffeid.ID{}, refuse(ReasonIdentity, "failed to validate impersonated identity %q: %v", asked, err)
	}
	if id.TrustDomain() != a.TrustDomain {
		return spiffeid.ID{}, refuse(ReasonTrustDomain, "impersonated identity %s is outside trust domain %s, the only one this CA signs for", id, a.TrustDomain.Name())
	}
	if !a.Pods.HasSynced() {
		return spiffeid.ID{}, refuse(ReasonNotSynced, "%s/%s asked for %s before warden listed the cluster's pods; it may retry", k.Namespace, k.ServiceAccount, id)
	}
	pod := a.Pods.Get(k.Namespace, k.PodName)
	if pod == nil {
		if k.PodName == "" {
			return spiffeid.ID{}, refuse(ReasonPodNotFound, "pod %s/ not found: the caller's token is bound to no pod; a node proxy must send its pod's projected service-account token (audience istio-ca)", k.Namespace)
		}
		return spiffeid.ID{}, refuse(ReasonPodNotFound, "pod %s/%s not found (deleted, not listed yet, or in phase Failed)", k.Namespace, k.PodName)
	}
	if string(pod.UID) != k.PodUID {
		// The pod was recreated under the same name and the token is
		// the old one's (istiod: eventually consistent; the caller retries
		// with its new pod's token).
		return spiffeid.ID{}, refuse(ReasonPodUID, "pod found, but UID does not match: %s vs %s (pod %s/%s; the token is an earlier pod's of that name)", pod.UID, k.PodUID, k.Namespace, k.PodName)
	}
	if pod.Spec.ServiceAccountName != k.ServiceAccount {
		return spiffeid.ID{}, refuse(ReasonPodAccount, "pod found, but ServiceAccount does not match: %s vs %s (pod %s/%s)", pod.Spec.ServiceAccountName, k.ServiceAccount, k.Namespace, k.PodName)
	}
	ns, sa := namespaceAccount(id)
	if a.Pods.OnNode(ns, sa, pod.Spec.NodeName) == 0 {
		return spiffeid.ID{}, refuse(ReasonNotOnNode, "no instances of %q found on node %q, where the caller %s/%s runs", ns+"/"+sa, pod.Spec.NodeName, k.Namespace, k.PodName)
	}
	return id, nil
}

// parseIdentity reads spiffe://<td>/ns/<ns>/sa/<sa>, as istiod's
// spiffe.ParseIdentity does, and as a SPIFFE ID (go-spiffe: no empty
// segment, no characters a SPIFFE ID may not hold).
func parseIdentity(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if seg := strings.Split(id.Path(), "/"); len(seg) != 5 || seg[1] != "ns" || seg[3] != "sa" {
		return spiffeid.ID{}, fmt.Errorf("want spiffe://<trust domain>/ns/<namespace>/sa/<service account>")
	}
	return id, nil
}

// namespaceAccount are the namespace and account of an identity
// parseIdentity accepted.
func namespaceAccount(id spiffeid.ID) (string, string) {
	seg := strings.Split(id.Path(), "/")
	return seg[2], seg[4]
}
