package xds

import (
	"fmt"
	"net"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Generators: what kind of client a proxy is, from its node metadata
// GENERATOR (Istio's key). Envoy is the default.
const (
	GeneratorEnvoy = "envoy"
	GeneratorGRPC  = "grpc"
)

// Proxy is a connected client as its node describes it.
type Proxy struct {
	ID        string // the node ID, verbatim
	Type      string // sidecar or router
	IP        string
	Pod       string
	Namespace string
	Domain    string // ns.svc.cluster.local
	Generator string
}

// ParseNode reads Istio's node ID form
// <type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain> and the GENERATOR
// metadata.
func ParseNode(n *corev3.Node) (*Proxy, error) {
	if n == nil || n.GetId() == "" {
		return nil, fmt.Errorf("xds: the request carries no node ID (want sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local)")
	}
	p, err := ParseNodeID(n.GetId())
	if err != nil {
		return nil, err
	}
	p.Generator = GeneratorEnvoy
	if g := n.GetMetadata().GetFields()["GENERATOR"].GetStringValue(); g != "" {
		switch g {
		case GeneratorGRPC, GeneratorEnvoy:
			p.Generator = g
		default:
			return nil, fmt.Errorf("xds: node %s: metadata GENERATOR %q is not %q or %q", n.GetId(), g, GeneratorEnvoy, GeneratorGRPC)
		}
	}
	return p, nil
}

// ParseNodeID parses a node ID without metadata.
func ParseNodeID(id string) (*Proxy, error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return nil, fmt.Errorf("xds: node ID %q: want 4 parts separated by ~ (sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local), got %d", id, len(parts))
	}
	p := &Proxy{ID: id, Type: parts[0], IP: parts[1], Domain: parts[3], Generator: GeneratorEnvoy}
	switch p.Type {
	case "sidecar", "router":
	default:
		return nil, fmt.Errorf("xds: node ID %q: type %q is not sidecar or router", id, p.Type)
	}
	if net.ParseIP(p.IP) == nil {
		return nil, fmt.Errorf("xds: node ID %q: %q is not an IP address", id, p.IP)
	}
	ns, _, ok := strings.Cut(p.Domain, ".svc.")
	if !ok || ns == "" {
		return nil, fmt.Errorf("xds: node ID %q: domain %q is not <namespace>.svc.<cluster domain>", id, p.Domain)
	}
	p.Namespace = ns
	pod, podNS, ok := strings.Cut(parts[2], ".")
	if !ok || pod == "" || podNS != ns {
		return nil, fmt.Errorf("xds: node ID %q: %q is not <pod>.%s", id, parts[2], ns)
	}
	p.Pod = pod
	return p, nil
}
