package xds

import (
	"fmt"
	"sort"
	"strings"

	"github.com/wardenmesh/warden/api"
)

// Scope is what a proxy's outbound configuration depends on: its
// namespace, its generator and the Sidecar resource that applies to it.
// Proxies with one Scope share one outbound build.
type Scope struct {
	Namespace string
	Generator string
	// Router is a gateway proxy: clusters and endpoints only (its
	// listeners and routes come from Gateways, built per workload).
	Router bool
	// Sidecar narrows what the proxy sees (nil: every service exported to
	// its namespace).
	Sidecar *api.Sidecar
	// Transparent: the proxy's traffic is intercepted with TPROXY
	// (Proxy.Transparent): virtualOutbound is a transparent listener.
	Transparent bool
}

// Key identifies the scope's outbound configuration.
func (s Scope) Key() string {
	k := s.Namespace + "|" + s.Generator
	if s.Router {
		k += "|router"
	}
	if s.Sidecar != nil {
		k += "|" + objKey(s.Sidecar)
	}
	if s.Transparent {
		k += "|tproxy"
	}
	return k
}

// sidecarIndex holds the Sidecar resources by namespace, oldest first
// (Istio's order when several could apply).
type sidecarIndex map[string][]*api.Sidecar

func newSidecarIndex(objs []api.Object) sidecarIndex {
	ix := sidecarIndex{}
	for _, o := range objs {
		if sc, ok := o.(*api.Sidecar); ok {
			ix[sc.Metadata.Namespace] = append(ix[sc.Metadata.Namespace], sc)
		}
	}
	for _, l := range ix {
		sort.SliceStable(l, func(i, j int) bool {
			a, b := l[i].Metadata, l[j].Metadata
			if a.CreationTimestamp != b.CreationTimestamp {
				return a.CreationTimestamp < b.CreationTimestamp
			}
			return a.Name < b.Name
		})
	}
	return ix
}

// ScopeOf is p's scope. The Sidecar that applies is, as in Istio: the
// oldest in p's namespace whose workloadSelector matches the workload's
// labels; else the oldest in the namespace without a selector; else the
// oldest without a selector in the root namespace (the mesh default). A
// gateway proxy (router) has none.
func (m *Mesh) ScopeOf(p *Proxy, w *Workload) Scope {
	sc := Scope{Namespace: p.Namespace, Generator: p.Generator, Router: p.Type == RouterProxy, Transparent: p.Transparent}
	if sc.Router {
		return sc // Sidecars apply to sidecars, as in Istio
	}
	var labels map[string]string
	if w != nil {
		labels = w.Labels
	}
	for _, s := range m.sidecars[p.Namespace] {
		if sel := s.Spec.WorkloadSelector; sel != nil && len(sel.Labels) > 0 && labelsMatch(sel.Labels, labels) {
			sc.Sidecar = s
			return sc
		}
	}
	for _, ns := range []string{p.Namespace, m.opts.RootNamespace} {
		for _, s := range m.sidecars[ns] {
			if s.Spec.WorkloadSelector == nil || len(s.Spec.WorkloadSelector.Labels) == 0 {
				sc.Sidecar = s
				return sc
			}
		}
	}
	return sc
}

// egress is a Sidecar's egress hosts, resolved for one namespace.
type egress struct {
	listeners []egressListener
}

type egressListener struct {
	port  uint32 // 0: every port
	hosts []egressHost
}

// egressHost is one "namespace/host" entry: namespace "*" is any, "~"
// none; host "*", "*.suffix" or a name.
type egressHost struct{ ns, host string }

// compileSidecar resolves sc's egress for proxies in ns ("./" is ns, also
// for the root namespace's default) and reports the fields warden does
// not apply, by name.
func compileSidecar(sc *api.Sidecar, ns, root string) (*egress, []string) {
	var reports []string
	id := objKey(sc)
	report := func(format string, args ...any) {
		reports = append(reports, fmt.Sprintf("Sidecar %s: ", id)+fmt.Sprintf(format, args...))
	}
	if sc.Metadata.Namespace == root && sc.Spec.WorkloadSelector != nil && len(sc.Spec.WorkloadSelector.Labels) > 0 {
		report("a workloadSelector in the root namespace selects nothing (Istio ignores it too)")
	}
	if len(sc.Spec.Ingress) > 0 {
		report("ingress is not supported; inbound listeners come from the workload's ports")
	}
	if sc.Spec.InboundConnectionPool != nil {
		report("inboundConnectionPool is not supported; ignored")
	}
	if t := sc.Spec.OutboundTrafficPolicy; t != nil {
		if t.Mode == "ALLOW_ANY" {
			report("outboundTrafficPolicy.mode ALLOW_ANY is not supported: unknown hosts stay unreachable (REGISTRY_ONLY)")
		}
		if t.EgressProxy != nil {
			report("outboundTrafficPolicy.egressProxy is not supported; ignored")
		}
	}
	e := &egress{}
	listeners := sc.Spec.Egress
	if len(listeners) == 0 {
		listeners = []api.IstioEgressListener{{Hosts: []string{"*/*"}}}
	}
	for i, l := range listeners {
		if l.Bind != "" {
			report("egress[%d].bind is not supported; ignored", i)
		}
		if l.CaptureMode != "" && l.CaptureMode != "DEFAULT" {
			report("egress[%d].captureMode %s is not supported; ignored", i, l.CaptureMode)
		}
		el := egressListener{}
		if l.Port != nil {
			el.port = l.Port.Number
			if l.Port.Protocol != "" || l.Port.Name != "" || l.Port.TargetPort != 0 {
				report("egress[%d].port: only number is applied (protocol, name and targetPort come from each service's own port)", i)
			}
		}
		for _, h := range l.Hosts {
			hns, host, _ := strings.Cut(h, "/") // api validation requires the slash
			if hns == "." {
				hns = ns
			}
			el.hosts = append(el.hosts, egressHost{ns: hns, host: host})
		}
		e.listeners = append(e.listeners, el)
	}
	return e, reports
}

// admits says whether a listener's hosts name (ns, host).
func (l *egressListener) admits(ns, host string) bool {
	for _, h := range l.hosts {
		if h.ns != "*" && h.ns != ns {
			continue
		}
		if hostMatches(h.host, host) {
			return true
		}
	}
	return false
}

// ports are the ports of s the egress lets through; all is true when a
// listener without a port names it.
func (e *egress) ports(s *Service) (all bool, ports map[uint32]bool) {
	for i := range e.listeners {
		l := &e.listeners[i]
		if !l.admits(s.Namespace, s.Host) {
			continue
		}
		if l.port == 0 {
			return true, nil
		}
		if ports == nil {
			ports = map[uint32]bool{}
		}
		ports[l.port] = true
	}
	return false, ports
}

// admitsConfig says whether a routing object in namespace ns for one of
// hosts is in scope (Istio scopes VirtualServices by their namespace).
func (e *egress) admitsConfig(ns string, hosts []string) bool {
	for i := range e.listeners {
		for _, h := range hosts {
			if e.listeners[i].admits(ns, h) {
				return true
			}
		}
	}
	return false
}
