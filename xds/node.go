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

// ProxyType is what a proxy is: the first part of its node ID, as Istio
// names it.
type ProxyType string

// Proxy types.
const (
	// SidecarProxy is a workload's own proxy (Envoy or proxyless gRPC).
	SidecarProxy ProxyType = "sidecar"
	// RouterProxy is an ingress or egress gateway.
	RouterProxy ProxyType = "router"
	// ZtunnelProxy is Istio ambient mode's node proxy: it receives the
	// workloads and L4 policies of the mesh (xds/ambient), over delta
	// ADS only, and only as a trusted node account (MayServeZtunnel).
	ZtunnelProxy ProxyType = "ztunnel"
)

// Proxy is a connected client as its node describes it.
type Proxy struct {
	ID        string // the node ID, verbatim
	Type      ProxyType
	IP        string
	Pod       string
	Namespace string
	Domain    string // ns.svc.cluster.local
	Generator string
	// IstioVersion is the metadata ISTIO_VERSION the proxy sent (Istio's
	// agent sends its release), for metrics only; empty when absent or
	// not a version-like string (at most 64 letters, digits and .-+_).
	IstioVersion string
	// Transparent: an Envoy sidecar whose traffic iptables intercepts
	// with TPROXY (metadata INTERCEPTION_MODE), not REDIRECT. Its virtual
	// listeners are transparent, and inbound connections keep the
	// caller's address (original_src), as Istio builds them.
	Transparent bool
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
	if v := n.GetMetadata().GetFields()["ISTIO_VERSION"].GetStringValue(); versionLike(v) {
		p.IstioVersion = v
	}
	if g := n.GetMetadata().GetFields()["GENERATOR"].GetStringValue(); g != "" {
		switch g {
		case GeneratorGRPC, GeneratorEnvoy:
			p.Generator = g
		default:
			return nil, fmt.Errorf("xds: node %s: metadata GENERATOR %q is not %q or %q", n.GetId(), g, GeneratorEnvoy, GeneratorGRPC)
		}
	}
	if err := p.interception(n.GetMetadata().GetFields()["INTERCEPTION_MODE"].GetStringValue()); err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", n.GetId(), err)
	}
	return p, nil
}

// interception reads the metadata INTERCEPTION_MODE of an Envoy sidecar.
// Gateways bind their own ports and proxyless gRPC has nothing
// intercepted: for them, as in Istio, the mode changes nothing.
func (p *Proxy) interception(mode string) error {
	if p.Type != SidecarProxy || p.Generator != GeneratorEnvoy {
		return nil
	}
	switch mode {
	case "", "REDIRECT":
	case "TPROXY":
		p.Transparent = true
	case "NONE":
		return fmt.Errorf(`metadata INTERCEPTION_MODE "NONE" (a sidecar without iptables) is not served: warden builds a sidecar's listeners for iptables interception, REDIRECT or TPROXY; without it they would have to bind the workload's ports`)
	default:
		return fmt.Errorf("metadata INTERCEPTION_MODE %q is not REDIRECT or TPROXY (or NONE, which warden does not serve)", mode)
	}
	return nil
}

// versionLike: a label value a client may choose without bloating the
// metrics (short, and only the characters of a release name).
func versionLike(v string) bool {
	if len(v) > 64 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+' || c == '_') {
			return false
		}
	}
	return true
}

// ParseNodeID parses a node ID without metadata.
func ParseNodeID(id string) (*Proxy, error) {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return nil, fmt.Errorf("xds: node ID %q: want 4 parts separated by ~ (sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local), got %d", id, len(parts))
	}
	p := &Proxy{ID: id, Type: ProxyType(parts[0]), IP: parts[1], Domain: parts[3], Generator: GeneratorEnvoy}
	switch p.Type {
	case SidecarProxy, RouterProxy, ZtunnelProxy:
	default:
		return nil, fmt.Errorf("xds: node ID %q: type %q is not sidecar, router or ztunnel", id, p.Type)
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
