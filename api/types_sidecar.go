package api

import (
	"fmt"
	"strings"
)

// Sidecar (networking.istio.io/v1alpha3, v1beta1, v1) scopes what the
// proxies it applies to receive. warden compiles egress hosts (which
// services a proxy sees); the other fields are read and reported by name
// where warden does not apply them (see xds).
type Sidecar struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta  `json:"metadata"`
	Spec     SidecarSpec `json:"spec,omitempty"`
}

// SidecarSpec is the scope. With no workloadSelector it applies to every
// proxy of its namespace (one such per namespace; in the root namespace,
// the mesh-wide default).
type SidecarSpec struct {
	WorkloadSelector      *EntrySelector          `json:"workloadSelector,omitempty"`
	Ingress               []IstioIngressListener  `json:"ingress,omitempty"`
	Egress                []IstioEgressListener   `json:"egress,omitempty"`
	InboundConnectionPool *ConnectionPoolSettings `json:"inboundConnectionPool,omitempty"`
	OutboundTrafficPolicy *OutboundTrafficPolicy  `json:"outboundTrafficPolicy,omitempty"`
}

// IstioEgressListener is one egress listener: the hosts (namespace/host)
// a proxy may reach, optionally on one port.
type IstioEgressListener struct {
	Port        *SidecarPort `json:"port,omitempty"`
	Bind        string       `json:"bind,omitempty"`
	CaptureMode string       `json:"captureMode,omitempty" enum:"DEFAULT,IPTABLES,NONE"`
	Hosts       []string     `json:"hosts"`
}

// IstioIngressListener is one inbound port's listener.
type IstioIngressListener struct {
	Port            SidecarPort             `json:"port"`
	Bind            string                  `json:"bind,omitempty"`
	CaptureMode     string                  `json:"captureMode,omitempty" enum:"DEFAULT,IPTABLES,NONE"`
	DefaultEndpoint string                  `json:"defaultEndpoint,omitempty"`
	TLS             *ServerTLSSettings      `json:"tls,omitempty"`
	ConnectionPool  *ConnectionPoolSettings `json:"connectionPool,omitempty"`
}

// SidecarPort is a listener's port.
type SidecarPort struct {
	Number     uint32 `json:"number,omitempty"`
	Protocol   string `json:"protocol,omitempty"`
	Name       string `json:"name,omitempty"`
	TargetPort uint32 `json:"targetPort,omitempty"`
}

// OutboundTrafficPolicy is what happens to traffic for hosts the proxy
// does not know.
type OutboundTrafficPolicy struct {
	Mode        string       `json:"mode,omitempty" enum:"REGISTRY_ONLY,ALLOW_ANY"`
	EgressProxy *Destination `json:"egressProxy,omitempty"`
}

// check applies Istio's rules: every egress host is "namespace/host"
// (namespace "*", ".", "~" or a name; host "*", "*.suffix" or a name),
// every listener has hosts, and a listener without a port (the catch-all)
// comes last and alone.
func (s *SidecarSpec) check() error {
	catchAll := false
	for i, l := range s.Egress {
		where := fmt.Sprintf("egress[%d]", i)
		if catchAll {
			return &fieldError{where, "the egress listener without a port must be the last one"}
		}
		if l.Port == nil || l.Port.Number == 0 {
			catchAll = true
		} else if l.Port.Number > 65535 {
			return &fieldError{where + ".port.number", fmt.Sprintf("%d is not a port number", l.Port.Number)}
		}
		if len(l.Hosts) == 0 {
			return &fieldError{where + ".hosts", "at least one host is required"}
		}
		for j, h := range l.Hosts {
			if err := checkEgressHost(h); err != nil {
				return &fieldError{fmt.Sprintf("%s.hosts[%d]", where, j), err.Error()}
			}
		}
	}
	for i, l := range s.Ingress {
		if l.Port.Number == 0 || l.Port.Number > 65535 {
			return &fieldError{fmt.Sprintf("ingress[%d].port.number", i), fmt.Sprintf("%d is not a port number", l.Port.Number)}
		}
	}
	return nil
}

func checkEgressHost(h string) error {
	ns, host, ok := strings.Cut(h, "/")
	if !ok {
		return fmt.Errorf("%q is not namespace/host (e.g. \"./*\", \"istio-system/*\", \"*/api.example.com\")", h)
	}
	if ns != "*" && ns != "." && ns != "~" && !dnsLabel.MatchString(ns) {
		return fmt.Errorf("%q: namespace %q is not *, ., ~ or a namespace name", h, ns)
	}
	name := strings.TrimPrefix(host, "*.")
	if host != "*" && (name == "" || strings.Contains(name, "*") || !dnsSubdomain.MatchString(strings.ToLower(name))) {
		return fmt.Errorf("%q: host %q is not *, *.suffix or a host name", h, host)
	}
	return nil
}
