package xds

import (
	"fmt"
	"sort"
	"strings"

	"github.com/wardenmesh/warden/api"
)

// Service is a service in the registry: Kubernetes Services with their
// EndpointSlices, or ServiceEntry objects in standalone mode.
type Service struct {
	Host      string // FQDN, e.g. flaskapp.default.svc.cluster.local
	Name      string
	Namespace string
	Ports     []ServicePort
	Endpoints []Endpoint
	External  bool     // MESH_EXTERNAL: not in the mesh, no auto-mTLS
	ExportTo  []string // "*" (default), "." or namespaces
	// Addresses a client dials to reach the service (ClusterIPs,
	// ServiceEntry addresses: IPs or CIDRs): how an outbound TCP service
	// is told from others on the same port.
	Addresses []string
	Headless  bool // a Kubernetes Service with clusterIP None

	// Entry is the ServiceEntry (namespace/name) the service comes from;
	// "" for a Kubernetes Service.
	Entry string
	// Resolution is the ServiceEntry's resolution (NONE when unset, as
	// in Istio): how its clusters find their endpoints (discovery).
	Resolution string
	// SubjectAltNames are the ServiceEntry's subjectAltNames: identities
	// its servers may present besides its endpoints' service accounts.
	SubjectAltNames []string
	// notes are the ServiceEntry fields warden reads but does not
	// honour, reported to every proxy the service is visible to.
	notes []string
}

// ServicePort is one port of a service.
type ServicePort struct {
	Number     uint32
	Name       string
	Protocol   string // HTTP, HTTP2, GRPC, TCP... (from the name's prefix when empty)
	TargetPort uint32 // 0: same as Number
}

// Endpoint is one workload instance behind a service.
type Endpoint struct {
	Address        string
	Ports          map[string]uint32 // port name -> workload port
	Labels         map[string]string
	ServiceAccount string
	Weight         uint32
}

// target is the workload port p reaches on e.
func (e *Endpoint) target(p ServicePort) uint32 {
	if n, ok := e.Ports[p.Name]; ok {
		return n
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Number
}

// isHTTP says whether a port carries HTTP (HTTP/1, HTTP/2, gRPC); other
// ports get TCP proxying.
func (p ServicePort) isHTTP() bool {
	proto := strings.ToUpper(p.Protocol)
	if proto == "" {
		proto, _, _ = strings.Cut(strings.ToUpper(p.Name), "-")
	}
	switch proto {
	case "HTTP", "HTTP2", "GRPC", "GRPC-WEB":
		return true
	}
	return false
}

// ServicesFromEntries builds the registry from ServiceEntry objects:
// hosts without a dot are short names in the entry's namespace.
func ServicesFromEntries(objs []api.Object, domain string) ([]*Service, error) {
	if domain == "" {
		domain = DefaultDomain
	}
	var out []*Service
	seen := map[string]string{}
	for _, o := range objs {
		se, ok := o.(*api.ServiceEntry)
		if !ok {
			continue
		}
		m := se.Metadata
		for _, h := range se.Spec.Hosts {
			host := h
			if !strings.Contains(h, ".") {
				host = fmt.Sprintf("%s.%s.svc.%s", h, m.Namespace, domain)
			}
			if prev, dup := seen[host]; dup {
				return nil, fmt.Errorf("xds: ServiceEntry %s/%s: host %s is already defined by ServiceEntry %s", m.Namespace, m.Name, host, prev)
			}
			seen[host] = m.Namespace + "/" + m.Name
			name, _, _ := strings.Cut(host, ".")
			s := &Service{Host: host, Name: name, Namespace: m.Namespace, External: se.Spec.Location == "MESH_EXTERNAL", ExportTo: se.Spec.ExportTo, Addresses: se.Spec.Addresses,
				Entry: m.Namespace + "/" + m.Name, Resolution: resolution(se.Spec.Resolution), SubjectAltNames: se.Spec.SubjectAltNames, notes: EntryReports(se)}
			for _, p := range se.Spec.Ports {
				s.Ports = append(s.Ports, ServicePort{Number: p.Number, Name: p.Name, Protocol: p.Protocol, TargetPort: p.TargetPort})
			}
			for _, e := range se.Spec.Endpoints {
				s.Endpoints = append(s.Endpoints, Endpoint{Address: e.Address, Ports: e.Ports, Labels: e.Labels, ServiceAccount: e.ServiceAccount, Weight: e.Weight})
			}
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

func resolution(r string) string {
	if r == "" {
		return "NONE" // the proto's zero value
	}
	return r
}

// EntryReports names the fields of a ServiceEntry that warden reads but
// does not honour, with what happens instead. Every other field is
// compiled: hosts, addresses, ports, location, resolution (the cluster
// type), exportTo, subjectAltNames and the endpoints' address, ports,
// labels, weight and serviceAccount.
func EntryReports(se *api.ServiceEntry) []string {
	id := "ServiceEntry " + se.Metadata.Namespace + "/" + se.Metadata.Name
	var out []string
	report := func(format string, args ...any) { out = append(out, id+": "+fmt.Sprintf(format, args...)) }
	sp := &se.Spec
	switch r := resolution(sp.Resolution); {
	case r == "DYNAMIC_DNS":
		report("resolution DYNAMIC_DNS (Envoy's dynamic forward proxy) is not supported; the clusters are EDS over the listed endpoints")
	case r == "NONE" && len(sp.Endpoints) > 0:
		report("resolution NONE (the default) takes no endpoints (Istio refuses them); warden balances over them as with resolution STATIC: set resolution: STATIC")
	case r == "DNS_ROUND_ROBIN" && len(sp.Endpoints) > 1:
		report("resolution DNS_ROUND_ROBIN takes one endpoint (Envoy's LOGICAL_DNS); only endpoints[0] %s is used", sp.Endpoints[0].Address)
	}
	if sp.WorkloadSelector != nil {
		report("workloadSelector (WorkloadEntries and pods as endpoints) is not supported; the service has only the endpoints listed in endpoints")
	}
	for i, e := range sp.Endpoints {
		if e.Network != "" {
			// Istio reaches an endpoint on another network through that
			// network's gateway; warden has no multi-network support.
			report("endpoints[%d].network %q is not supported (multi-network); the endpoint is dialed directly at %s", i, e.Network, e.Address)
		}
		if e.Locality != "" {
			report("endpoints[%d].locality %q is not supported (no locality-aware load balancing); the endpoint is balanced with the others", i, e.Locality)
		}
	}
	return out
}

// MergeServices combines the Kubernetes registry with the services of
// ServiceEntry objects. A Kubernetes Service owns its host: an entry for
// the same host is left out, and its host reported in shadowed, so that
// an entry cannot redirect a cluster service's traffic. Both inputs and
// the result are sorted by host.
func MergeServices(kube, entries []*Service) (merged []*Service, shadowed []string) {
	owned := make(map[string]bool, len(kube))
	merged = make([]*Service, 0, len(kube)+len(entries))
	for _, s := range kube {
		owned[s.Host] = true
		merged = append(merged, s)
	}
	for _, s := range entries {
		if owned[s.Host] {
			shadowed = append(shadowed, s.Host)
			continue
		}
		merged = append(merged, s)
	}
	sort.Slice(merged, func(i, j int) bool { return merged[i].Host < merged[j].Host })
	return merged, shadowed
}

// visibleFrom says whether proxies in ns may see s (exportTo).
func (s *Service) visibleFrom(ns string) bool {
	return exported(s.ExportTo, s.Namespace, ns)
}

func exported(exportTo []string, owner, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		if e == "*" || e == ns || (e == "." && owner == ns) {
			return true
		}
	}
	return false
}
