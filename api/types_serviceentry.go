package api

import (
	"fmt"
	"net"
)

// ServiceEntry (networking.istio.io/v1alpha3, v1beta1, v1) adds a service
// to the mesh's registry. In standalone mode it is warden's service
// registry: each entry with resolution STATIC lists its workloads as
// endpoints (address, labels, service account), which is what a
// Kubernetes Service and its EndpointSlices say in a cluster.
type ServiceEntry struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta       `json:"metadata"`
	Spec     ServiceEntrySpec `json:"spec,omitempty"`
}

// ServiceEntrySpec describes the service.
type ServiceEntrySpec struct {
	Hosts            []string        `json:"hosts"`
	Addresses        []string        `json:"addresses,omitempty"`
	Ports            []ServicePort   `json:"ports,omitempty"`
	Location         string          `json:"location,omitempty" enum:"MESH_EXTERNAL,MESH_INTERNAL"`
	Resolution       string          `json:"resolution,omitempty" enum:"NONE,STATIC,DNS,DNS_ROUND_ROBIN,DYNAMIC_DNS"`
	Endpoints        []WorkloadEntry `json:"endpoints,omitempty"`
	WorkloadSelector *EntrySelector  `json:"workloadSelector,omitempty"`
	ExportTo         []string        `json:"exportTo,omitempty"`
	SubjectAltNames  []string        `json:"subjectAltNames,omitempty"`
}

// EntrySelector selects workloads by labels (ServiceEntry spells it
// labels, not matchLabels).
type EntrySelector struct {
	Labels map[string]string `json:"labels,omitempty"`
}

// ServicePort is a port of a service.
type ServicePort struct {
	Number     uint32 `json:"number"`
	Protocol   string `json:"protocol,omitempty"`
	Name       string `json:"name"`
	TargetPort uint32 `json:"targetPort,omitempty"`
}

// WorkloadEntry is one workload behind a service.
type WorkloadEntry struct {
	Address        string            `json:"address,omitempty"`
	Ports          map[string]uint32 `json:"ports,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Network        string            `json:"network,omitempty"`
	Locality       string            `json:"locality,omitempty"`
	Weight         uint32            `json:"weight,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
}

func (s *ServiceEntrySpec) check() error {
	if len(s.Hosts) == 0 {
		return &fieldError{"hosts", "at least one host is required"}
	}
	seen := map[uint32]bool{}
	for i, p := range s.Ports {
		switch {
		case p.Number == 0 || p.Number > 65535:
			return &fieldError{fmt.Sprintf("ports[%d].number", i), fmt.Sprintf("%d is not a port number", p.Number)}
		case seen[p.Number]:
			return &fieldError{fmt.Sprintf("ports[%d].number", i), fmt.Sprintf("port %d is listed twice", p.Number)}
		case p.TargetPort > 65535:
			return &fieldError{fmt.Sprintf("ports[%d].targetPort", i), fmt.Sprintf("%d is not a port number", p.TargetPort)}
		}
		seen[p.Number] = true
	}
	for i, e := range s.Endpoints {
		where := fmt.Sprintf("endpoints[%d]", i)
		if e.Address == "" {
			return &fieldError{where + ".address", "required"}
		}
		if s.Resolution == "STATIC" && net.ParseIP(e.Address) == nil {
			return &fieldError{where + ".address", fmt.Sprintf("%q is not an IP address (resolution STATIC)", e.Address)}
		}
		for _, name := range sortedKeys(e.Ports) {
			if e.Ports[name] == 0 || e.Ports[name] > 65535 {
				return &fieldError{fmt.Sprintf("%s.ports[%q]", where, name), fmt.Sprintf("%d is not a port number", e.Ports[name])}
			}
		}
	}
	if len(s.Endpoints) > 0 && s.WorkloadSelector != nil {
		return &fieldError{"workloadSelector", "cannot be set together with endpoints"}
	}
	return nil
}
