// Package rbac compiles authorization policy for one workload into Envoy
// RBAC filters (HTTP and network), and explains decisions by evaluating the
// compiled filters themselves, so explanation and enforcement cannot
// disagree.
//
// Semantics (Istio's): each rule becomes one RBAC policy named
// ns[<ns>]-policy[<name>]-rule[<i>]; each `from` source becomes one
// principal and each `to` operation one permission (entries are ORed);
// values in a field are ORed, fields are ANDed, not* fields negate;
// `when` conditions are ANDed into every entry of the side they describe.
// A policy in the root namespace applies mesh-wide, or with a selector to
// the matching workloads of every namespace. Filters come in the order AUDIT (RBAC
// LOG), DENY, ALLOW; if any ALLOW policy applies, a request matching none is
// denied, and an ALLOW policy without rules denies everything. A value that
// cannot be expressed (an HTTP-only field on a TCP port, a malformed IP
// block) drops its rule from an ALLOW policy (narrower) and drops only that
// condition from DENY and AUDIT policies (wider); both are reported.
//
// The package is a pure library: no Kubernetes or gRPC.
package rbac

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload is the proxy being configured.
type Workload struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	// ServiceFQDNs are the hosts of the Services selecting the workload (legacy
	// ServiceRole rules name them).
	ServiceFQDNs []string `json:"services,omitempty"`
}

// Options are mesh-wide settings.
type Options struct {
	RootNamespace string               // default istio-system
	TrustDomain   spiffeid.TrustDomain // default cluster.local
	// TrustDomainAliases are the mesh's other trust domains (Istio's
	// meshConfig trustDomainAliases): principals naming any of them, or
	// cluster.local, match peers of all of them.
	TrustDomainAliases []string
	// FederatedTrustDomains are the foreign trust domains some namespace
	// federates with (SPIFFE Federation). A principal naming one is
	// never rewritten to the local trust domain, not even when it is
	// "cluster.local" (which otherwise means the local trust domain), and
	// Check reports a policy value naming a trust domain that is none of
	// the local one, its aliases and these: no peer can present it.
	FederatedTrustDomains []string
	TCP                   bool // compile the network filter for a TCP port
	// PathNormalization is Istio's meshConfig pathNormalization, which
	// Explain applies before matching (default BASE).
	PathNormalization string
}

func (o *Options) fill() {
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.PathNormalization == "" {
		o.PathNormalization = PathBase
	}
	if o.TrustDomain.IsZero() {
		o.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
}

// Filter names.
const (
	HTTPFilter    = "envoy.filters.http.rbac"
	NetworkFilter = "envoy.filters.network.rbac"
	ExtAuthz      = "envoy.filters.http.ext_authz"
	// NetworkExtAuthz is the TCP ports' external authorizer.
	NetworkExtAuthz = "envoy.filters.network.ext_authz"
)

// ExtAuthzClusterPrefix begins the Envoy cluster a CUSTOM provider's
// ext_authz calls, ext-authz|<provider>. warden serves no such cluster:
// the proxy's bootstrap defines it (docs/policy-authz.md).
const ExtAuthzClusterPrefix = "ext-authz|"
