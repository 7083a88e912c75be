package xds

import (
	"fmt"
	"sort"
	"strings"

	"github.com/wardenmesh/warden/authn"
)

// HostIndex resolves the hosts policy names in URLs (a jwksUri's) to the
// registry services whose outbound clusters carry them, so that the
// cluster a compiled filter refers to is one the proxies are sent.
//
// Istio's rule (pilot/pkg/model telemetry_logging.go, LookupCluster, which
// pilot/pkg/security/authn policy_applier.go JwtFilter calls for a jwksUri)
// is an exact look-up of the host in the push context's service index
// (PushContext.ServiceIndex.HostnameAndNamespace): found in one namespace,
// the cluster is outbound|port||<service hostname>; found in several, an
// error ("found ... in multiple namespaces"); not found, an error. On
// either error its Envoy fetch mode names the cluster after the host as
// written (model.BuildSubsetKey), which no proxy has unless a ServiceEntry
// defines that host. istiod fills that index from Service.Hostname only
// (push_context.go, initServiceRegistry), so a Kubernetes Service is
// found by its FQDN alone.
//
// warden follows that rule, and also resolves the two Kubernetes DNS short
// forms that name one Service wherever they are dialled from,
// name.namespace and name.namespace.svc, to name.namespace.svc.<domain>:
// the keys Istio's default fetch mode (istiod fetching jwksUri itself,
// where cluster DNS resolves those forms) trusts, and the cluster Istio's
// TestJwtFilter expects ("JWT policy with Mesh cluster as issuer and
// remote jwks mode Envoy", whose index holds jwt-token-issuer.mesh for the
// Service jwt-token-issuer.mesh.svc.cluster.local). A bare name is left
// unresolved and reported: its namespace would be the dialler's (the
// workload's for Envoy, istiod's for Istio's default mode), which a policy
// applying to many namespaces does not fix.
type HostIndex struct {
	domain string
	byHost map[string][]*Service
}

var _ authn.HostResolver = (*HostIndex)(nil)

// NewHostIndex indexes services by host; domain is the cluster DNS domain
// (default cluster.local).
func NewHostIndex(services []*Service, domain string) *HostIndex {
	if domain == "" {
		domain = DefaultDomain
	}
	h := &HostIndex{domain: domain, byHost: map[string][]*Service{}}
	for _, s := range services {
		h.byHost[s.Host] = append(h.byHost[s.Host], s)
	}
	return h
}

// ResolveHost implements authn.HostResolver: the registry hostname whose
// cluster outbound|port||<hostname> carries host:port, or host as written
// and why no such cluster exists.
func (h *HostIndex) ResolveHost(host string, port uint32) (string, error) {
	svcs := h.byHost[host]
	if len(svcs) == 0 {
		if fqdn, ok := h.shortForm(host); ok {
			svcs = h.byHost[fqdn]
		}
	}
	switch len(svcs) {
	case 0:
		if !strings.Contains(host, ".") {
			return host, fmt.Errorf("host %s is a bare name, which names no registry service (its namespace would be the caller's); write <name>.<namespace> or the service's FQDN", host)
		}
		return host, fmt.Errorf("no service %s in the registry; name an in-mesh service by its FQDN, <name>.<namespace> or <name>.<namespace>.svc, or add a ServiceEntry for host %s with port %d", host, host, port)
	case 1:
		s := svcs[0]
		for _, p := range s.Ports {
			if p.Number == port {
				return s.Host, nil
			}
		}
		return s.Host, fmt.Errorf("service %s has no port %d, so no cluster outbound|%d||%s exists; use one of its ports (%s)", s.Host, port, port, s.Host, portList(s))
	}
	// Istio's LookupCluster refuses the choice, and its fallback cluster
	// is named after the host the services share.
	ns := make([]string, len(svcs))
	for i, s := range svcs {
		ns[i] = s.Namespace
	}
	sort.Strings(ns)
	return svcs[0].Host, fmt.Errorf("host %s is defined in several namespaces (%s), which Istio's service index refuses to choose from; keep one", svcs[0].Host, strings.Join(ns, ", "))
}

// shortForm is the FQDN a Kubernetes DNS short form name.namespace or
// name.namespace.svc stands for.
func (h *HostIndex) shortForm(host string) (string, bool) {
	labels := strings.Split(host, ".")
	switch {
	case len(labels) == 2 && labels[0] != "" && labels[1] != "":
		return host + ".svc." + h.domain, true
	case len(labels) == 3 && labels[0] != "" && labels[1] != "" && labels[2] == "svc":
		return host + "." + h.domain, true
	}
	return "", false
}

func portList(s *Service) string {
	ps := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		ps[i] = fmt.Sprint(p.Number)
	}
	return strings.Join(ps, ", ")
}

// JwksClustersChanged says whether a jwksUri the policies of both m and
// next hold is fetched through another cluster (or fails for another
// reason) in next: a registry change that changes jwt_authn, which
// Affects, looking at configuration objects only, does not see.
func (m *Mesh) JwksClustersChanged(next *Mesh) bool {
	before, after := m.authn.JwksClusters(), next.authn.JwksClusters()
	for uri, c := range after {
		if b, ok := before[uri]; ok && b != c {
			return true
		}
	}
	return false
}
