package ambient

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
)

// serviceInfo is a compiled service with what workloads need of it.
type serviceInfo struct {
	svc      *workloadapi.Service
	selector map[string]string // nil or empty: selects no pod
	// portNames: service port -> (its name, its named targetPort).
	portNames map[uint32][2]string
	entry     bool // from a ServiceEntry
	source    string
}

func (s *serviceInfo) key() string { return s.svc.Namespace + "/" + s.svc.Hostname }

// appProtocol is Istio's protocol of a port (kube ConvertProtocol, then
// toAppProtocolFromProtocol): appProtocol, else the name's prefix; TCP
// for unnamed well-known ports.
func appProtocol(port uint32, name, proto, app string) workloadapi.AppProtocol {
	if strings.EqualFold(proto, "UDP") {
		return workloadapi.AppProtocol_UNKNOWN
	}
	if app != "" {
		switch app {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
		name = app
	}
	if len(name) >= 8 && strings.EqualFold(name[:8], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	p := protocolOf(name)
	if p == workloadapi.AppProtocol_UNKNOWN && !known(name) {
		switch port {
		case 25, 53, 3306, 27017:
			return workloadapi.AppProtocol_TCP
		}
	}
	return p
}

// protocolOf is a ServiceEntry port's protocol name.
func protocolOf(s string) workloadapi.AppProtocol {
	switch strings.ToLower(s) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tls", "https":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}

// known: a protocol name Istio parses to something (even one ztunnel
// has no AppProtocol for).
func known(s string) bool {
	switch strings.ToLower(s) {
	case "tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls", "mongo", "redis", "mysql":
		return true
	}
	return false
}

const trafficDistributionAnnotation = "networking.istio.io/traffic-distribution"

// trafficDistribution is Istio's GetTrafficDistribution: the spec field,
// else the service's annotation, else its namespace's.
func trafficDistribution(spec string, svcAnn, nsAnn map[string]string) *workloadapi.LoadBalancing {
	pick := func(v string) (*workloadapi.LoadBalancing, bool) {
		switch strings.ToLower(v) {
		case "":
			return nil, false
		case "preferclose", "prefersamezone":
			return &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
				workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE},
				Mode: workloadapi.LoadBalancing_FAILOVER}, true
		case "prefersamenode":
			return &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{
				workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
				workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE},
				Mode: workloadapi.LoadBalancing_FAILOVER}, true
		}
		return nil, true // unknown: any endpoint
	}
	switch spec {
	case "PreferSameZone", "PreferClose":
		lb, _ := pick("prefersamezone")
		return lb
	case "PreferSameNode":
		lb, _ := pick("prefersamenode")
		return lb
	}
	if lb, ok := pick(svcAnn[trafficDistributionAnnotation]); ok {
		return lb
	}
	lb, _ := pick(nsAnn[trafficDistributionAnnotation])
	return lb
}

// waypointOf is the waypoint an object's (or else its namespace's)
// istio.io/use-waypoint label names: Istio's waypoint controller gives a
// waypoint Gateway the address of its Service, <name>.<ns>.svc.<domain>,
// which ztunnel reaches on 15008. "none" opts out. warden does not read
// the Gateway itself (waypoints are not served).
func waypointOf(labels map[string]string, ns *Namespace, objNS, domain string) *workloadapi.GatewayAddress {
	name, wns, ok := useWaypoint(labels, objNS)
	if !ok && ns != nil {
		name, wns, ok = useWaypoint(ns.Labels, objNS)
	}
	if !ok || name == "" {
		return nil
	}
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: wns, Hostname: fmt.Sprintf("%s.%s.svc.%s", name, wns, domain)}},
		HboneMtlsPort: WaypointHBONEPort,
	}
}

// useWaypoint reads the label; ok with an empty name is "none".
func useWaypoint(labels map[string]string, ns string) (name, wns string, ok bool) {
	v, ok := labels[UseWaypointLabel]
	if !ok {
		return "", "", false
	}
	if v == "none" {
		return "", "", true
	}
	if o, f := labels[UseWaypointNamespaceLabel]; f {
		ns = o
	}
	return v, ns, true
}

func (c *compiler) kubeService(s *Service) *serviceInfo {
	if s.ExternalName {
		return nil
	}
	ns := c.namespaces[s.Namespace]
	var nsAnn map[string]string
	if ns != nil {
		nsAnn = ns.Annotations
	}
	out := &workloadapi.Service{
		Name: s.Name, Namespace: s.Namespace, Hostname: fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, c.in.Domain),
		Canonical: true, Waypoint: waypointOf(s.Labels, ns, s.Namespace, c.in.Domain),
	}
	names := map[uint32][2]string{}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, &workloadapi.Port{ServicePort: p.Port, TargetPort: p.TargetPort, AppProtocol: appProtocol(p.Port, p.Name, p.Protocol, p.AppProtocol)})
		names[p.Port] = [2]string{p.Name, p.TargetPortName}
	}
	for _, ip := range s.ClusterIPs {
		if ip == "" || ip == "None" {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			c.report("Service %s/%s: clusterIP %q is not an IP address; the service is not sent to ztunnel", s.Namespace, s.Name, ip)
			return nil
		}
		out.Addresses = append(out.Addresses, &workloadapi.NetworkAddress{Network: c.in.Network, Address: a.AsSlice()})
	}
	if s.InternalTrafficPolicyLocal {
		out.LoadBalancing = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT}
	} else {
		out.LoadBalancing = trafficDistribution(s.TrafficDistribution, s.Annotations, nsAnn)
	}
	if s.PublishNotReadyAddresses {
		if out.LoadBalancing == nil {
			out.LoadBalancing = &workloadapi.LoadBalancing{}
		}
		out.LoadBalancing.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	switch len(s.IPFamilies) {
	case 2:
		out.IpFamilies = workloadapi.IPFamilies_DUAL
	case 1:
		out.IpFamilies = workloadapi.IPFamilies_IPV6_ONLY
		if s.IPFamilies[0] == "IPv4" {
			out.IpFamilies = workloadapi.IPFamilies_IPV4_ONLY
		}
	}
	return &serviceInfo{svc: out, selector: s.Selector, portNames: names, source: "Service " + s.Namespace + "/" + s.Name}
}

// entryServices are a ServiceEntry's services, one per host.
func (c *compiler) entryServices(se *api.ServiceEntry) []*serviceInfo {
	m := se.Metadata
	var addrs []*workloadapi.NetworkAddress
	for _, a := range se.Spec.Addresses {
		var pfx netip.Prefix
		var err error
		if strings.Contains(a, "/") {
			pfx, err = netip.ParsePrefix(a)
			pfx = pfx.Masked()
		} else {
			var ip netip.Addr
			if ip, err = netip.ParseAddr(a); err == nil {
				pfx = netip.PrefixFrom(ip, ip.BitLen())
			}
		}
		if err != nil {
			c.report("ServiceEntry %s/%s: address %q is not an IP or CIDR; the entry is not sent to ztunnel", m.Namespace, m.Name, a)
			return nil
		}
		na := &workloadapi.NetworkAddress{Network: c.in.Network, Address: pfx.Addr().AsSlice()}
		if !pfx.IsSingleIP() {
			bits := uint32(pfx.Bits())
			na.Length = &bits
		}
		addrs = append(addrs, na)
	}
	var ports []*workloadapi.Port
	names := map[uint32][2]string{}
	for _, p := range se.Spec.Ports {
		t := p.TargetPort
		if t == 0 {
			t = p.Number
		}
		ports = append(ports, &workloadapi.Port{ServicePort: p.Number, TargetPort: t, AppProtocol: protocolOf(p.Protocol)})
		names[p.Number] = [2]string{p.Name, ""}
	}
	var lb *workloadapi.LoadBalancing
	if se.Spec.Resolution == "NONE" || se.Spec.Resolution == "" {
		lb = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_PASSTHROUGH, HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL}
	} else {
		var nsAnn map[string]string
		if ns := c.namespaces[m.Namespace]; ns != nil {
			nsAnn = ns.Annotations
		}
		lb = trafficDistribution("", m.Annotations, nsAnn)
	}
	var sel map[string]string
	if se.Spec.WorkloadSelector != nil {
		sel = se.Spec.WorkloadSelector.Labels
	}
	wp := waypointOf(m.Labels, c.namespaces[m.Namespace], m.Namespace, c.in.Domain)
	var out []*serviceInfo
	for _, h := range se.Spec.Hosts {
		out = append(out, &serviceInfo{
			svc: &workloadapi.Service{Name: m.Name, Namespace: m.Namespace, Hostname: h, Addresses: addrs, Ports: ports,
				Waypoint: wp, SubjectAltNames: se.Spec.SubjectAltNames, LoadBalancing: lb},
			selector: sel, portNames: names, entry: true, source: "ServiceEntry " + m.Namespace + "/" + m.Name,
		})
	}
	return out
}

var cronJobName = regexp.MustCompile(`(.+)-\d{8,10}$`)

// workloadName is Istio's name of the workload a pod belongs to
// (kube.GetWorkloadMetaFromPod): its Deployment, CronJob or controller,
// or the label service.istio.io/workload-name.
func workloadName(p *Pod) string {
	name := p.Name
	if p.GenerateName != "" && p.Controller != nil {
		o := p.Controller
		name = o.Name
		switch {
		case o.Kind == "ReplicaSet" && p.Labels["pod-template-hash"] != "" && strings.HasSuffix(o.Name, p.Labels["pod-template-hash"]):
			name = strings.TrimSuffix(o.Name, "-"+p.Labels["pod-template-hash"])
		case o.Kind == "ReplicaSet" && p.Labels["rollouts-pod-template-hash"] != "" && strings.HasSuffix(o.Name, p.Labels["rollouts-pod-template-hash"]):
			name = strings.TrimSuffix(o.Name, "-"+p.Labels["rollouts-pod-template-hash"])
		case o.Kind == "ReplicationController" && p.Labels["deploymentconfig"] != "":
			name = p.Labels["deploymentconfig"]
		case o.Kind == "Job":
			if m := cronJobName.FindStringSubmatch(o.Name); len(m) == 2 {
				name = m[1]
			}
		}
	}
	if n, ok := p.Labels["service.istio.io/workload-name"]; ok {
		name = n
	}
	return name
}

func firstLabel(labels map[string]string, keys ...string) (string, bool) {
	for _, k := range keys {
		if v, ok := labels[k]; ok {
			return v, true
		}
	}
	return "", false
}

// canonical is Istio's canonical service name and revision.
func canonical(labels map[string]string, workload string) (string, string) {
	name, ok := firstLabel(labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	if !ok {
		name = workload
	}
	rev, ok := firstLabel(labels, "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	if !ok {
		rev = "latest"
	}
	return name, rev
}

// tunnel is how the workload takes traffic (Istio's setTunnelProtocol,
// with PILOT_ENABLE_AMBIENT_... off): HBONE when istio-cni redirected
// it, or natively when it says it speaks HBONE.
func tunnel(labels, annotations map[string]string, w *workloadapi.Workload) {
	if annotations[RedirectionAnnotation] == "enabled" {
		w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	}
	if t, ok := labels["networking.istio.io/tunnel"]; ok {
		for _, x := range strings.Split(t, ",") {
			if x == "http" {
				w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
				w.NativeTunnel = true
			}
		}
	}
}

func (c *compiler) trustDomain() string {
	if c.in.TrustDomain == "cluster.local" {
		return ""
	}
	return c.in.TrustDomain
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// podWorkload is a pod's Workload (Istio's podWorkloadBuilder): nil for
// a pod that has terminated or has no IP yet.
func (c *compiler) podWorkload(p *Pod) *workloadapi.Workload {
	if p.Phase == "Failed" || p.Phase == "Succeeded" || len(p.IPs) == 0 {
		return nil
	}
	var addrs [][]byte
	for _, ip := range p.IPs {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil
		}
		addrs = append(addrs, a.AsSlice())
	}
	// The services that select it (a ServiceEntry's workloadSelector
	// too), and those without a selector whose EndpointSlices name it.
	var svcs []*serviceInfo
	seen := map[string]bool{}
	for _, s := range c.byNamespace[p.Namespace] {
		if len(s.selector) > 0 && subset(s.selector, p.Labels) {
			svcs = append(svcs, s)
			seen[s.svc.Hostname] = true
		}
	}
	for _, s := range c.endpointsOf[p.Namespace+"/"+p.Name] {
		if !seen[s.svc.Hostname] {
			svcs = append(svcs, s)
			seen[s.svc.Hostname] = true
		}
	}
	status := workloadapi.WorkloadStatus_HEALTHY
	if !p.Ready || p.Deleting {
		status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	w := &workloadapi.Workload{
		Uid: c.in.ClusterID + "//Pod/" + p.Namespace + "/" + p.Name, Name: p.Name, Namespace: p.Namespace,
		Network: c.in.Network, ClusterId: c.in.ClusterID, Addresses: addrs, ServiceAccount: p.ServiceAccount,
		Node: p.NodeName, Services: podServices(p, svcs), AuthorizationPolicies: c.workloadPolicies(p.Labels, p.Namespace),
		Status: status, TrustDomain: c.trustDomain(), WorkloadType: workloadapi.WorkloadType_POD,
	}
	// A workload's waypoint comes from its own label only: a namespace's
	// waypoint serves its services unless the waypoint says it takes
	// workload traffic (istio.io/waypoint-for), which only its Gateway
	// tells, and warden does not read waypoint Gateways.
	if _, own := p.Labels[UseWaypointLabel]; own {
		w.Waypoint = waypointOf(p.Labels, nil, p.Namespace, c.in.Domain)
	}
	if p.HostNetwork {
		w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
	}
	w.WorkloadName = workloadName(p)
	w.CanonicalName, w.CanonicalRevision = canonical(p.Labels, w.WorkloadName)
	tunnel(p.Labels, p.Annotations, w)
	return w
}

// podServices maps each service to the ports the pod serves it on
// (Istio's constructServices): a named targetPort resolves against the
// pod's container ports, and a port the pod lacks is left out.
func podServices(p *Pod, svcs []*serviceInfo) map[string]*workloadapi.PortList {
	out := map[string]*workloadapi.PortList{}
	for _, s := range svcs {
		pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(s.svc.Ports))}
		out[s.key()] = pl
		for _, port := range s.svc.Ports {
			target := port.TargetPort
			if n, ok := s.portNames[port.ServicePort]; ok {
				switch {
				case n[1] != "":
					tp, ok := p.ContainerPorts[n[1]]
					if !ok {
						continue
					}
					target = tp
				case s.entry && n[0] != "":
					if tp, ok := p.ContainerPorts[n[0]]; ok {
						target = tp
					} else if target == 0 {
						target = port.ServicePort
					}
				}
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: port.ServicePort, TargetPort: target})
		}
	}
	return out
}

// entryWorkloads are a ServiceEntry's inline endpoints as workloads
// (Istio's serviceEntryWorkloadBuilder), or, for a DNS entry without
// endpoints or selector, one per host.
func (c *compiler) entryWorkloads(se *api.ServiceEntry, svcs []*serviceInfo) []*workloadapi.Workload {
	m := se.Metadata
	eps := se.Spec.Endpoints
	implicit := len(eps) == 0 && (se.Spec.Resolution == "DNS" || se.Spec.Resolution == "DYNAMIC_DNS" || se.Spec.Resolution == "DNS_ROUND_ROBIN") && se.Spec.WorkloadSelector == nil
	if implicit {
		eps = nil
		for _, s := range svcs {
			eps = append(eps, api.WorkloadEntry{Address: s.svc.Hostname})
		}
	}
	var out []*workloadapi.Workload
	policies := c.workloadPolicies(m.Labels, m.Namespace)
	for i, e := range eps {
		use := svcs
		if implicit {
			use = svcs[i : i+1]
		}
		nw := c.in.Network
		if e.Network != "" {
			nw = e.Network
		}
		w := &workloadapi.Workload{
			Uid:  c.in.ClusterID + "/networking.istio.io/ServiceEntry/" + m.Namespace + "/" + m.Name + "/" + e.Address,
			Name: m.Name, Namespace: m.Namespace, Network: nw, ClusterId: c.in.ClusterID, ServiceAccount: e.ServiceAccount,
			Services: entryEndpointServices(e, use), AuthorizationPolicies: policies, TrustDomain: c.trustDomain(),
			Locality: locality(e.Locality), WorkloadName: m.Name, WorkloadType: workloadapi.WorkloadType_POD,
		}
		if !implicit {
			if _, own := e.Labels[UseWaypointLabel]; own {
				w.Waypoint = waypointOf(e.Labels, nil, m.Namespace, c.in.Domain)
			}
		}
		if e.Weight > 0 {
			w.Capacity = wrapperspb.UInt32(e.Weight)
		}
		if a, err := netip.ParseAddr(e.Address); err == nil {
			w.Addresses = [][]byte{a.AsSlice()}
		} else {
			w.Hostname = e.Address
		}
		w.CanonicalName, w.CanonicalRevision = canonical(m.Labels, m.Name)
		tunnel(m.Labels, m.Annotations, w)
		out = append(out, w)
	}
	return out
}

func locality(l string) *workloadapi.Locality {
	if l == "" {
		return nil
	}
	parts := strings.SplitN(l, "/", 3)
	out := &workloadapi.Locality{Region: parts[0]}
	if len(parts) > 1 {
		out.Zone = parts[1]
	}
	if len(parts) > 2 {
		out.Subzone = parts[2]
	}
	return out
}

// entryEndpointServices is Istio's constructServicesFromWorkloadEntry for
// a ServiceEntry's own endpoints: a port's target is the endpoint's port
// of the same name, else the entry's targetPort, else the port.
func entryEndpointServices(e api.WorkloadEntry, svcs []*serviceInfo) map[string]*workloadapi.PortList {
	out := map[string]*workloadapi.PortList{}
	for _, s := range svcs {
		pl := &workloadapi.PortList{}
		out[s.key()] = pl
		for _, port := range s.svc.Ports {
			target := port.TargetPort
			if n, ok := s.portNames[port.ServicePort]; ok {
				if tv, ok := e.Ports[n[0]]; ok {
					target = tv
				} else if target == 0 {
					target = port.ServicePort
				}
			}
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: port.ServicePort, TargetPort: target})
		}
	}
	return out
}

// workloadPolicies are the selector-scoped Authorizations a workload of
// labels in ns names, sorted, then its PeerAuthentication-derived ones
// (Istio's buildWorkloadPolicies).
func (c *compiler) workloadPolicies(labels map[string]string, ns string) []string {
	var names []string
	for _, a := range c.selected {
		if (a.auth.Namespace == c.in.RootNamespace || a.auth.Namespace == ns) && subset(a.selector, labels) {
			names = append(names, a.key())
		}
	}
	sort.Strings(names)
	var pas []*api.PeerAuthentication
	for _, p := range c.peerAuths {
		switch {
		case p.Metadata.Namespace == c.in.RootNamespace && p.Spec.Selector == nil:
			pas = append(pas, p)
		case p.Metadata.Namespace != ns:
		case p.Spec.Selector == nil || subset(p.Spec.Selector.MatchLabels, labels):
			pas = append(pas, p)
		}
	}
	return append(names, peerAuthKeys(c.in.RootNamespace, pas)...)
}
