package registry

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/wardenmesh/warden/internal/kube/podcache"
	"github.com/wardenmesh/warden/xds/ambient"
)

// Ambient is the registry as ztunnel's compiler reads it (every pod,
// Service and Namespace), from the informers' current state; empty
// before Run has listed.
func (r *Watcher) Ambient() (pods []*ambient.Pod, services []*ambient.Service, namespaces []*ambient.Namespace) {
	r.mu.Lock()
	svcLister, sliceLister, podLister, nsLister := r.services, r.slices, r.pods, r.namespaces
	r.mu.Unlock()
	if svcLister == nil {
		return nil, nil, nil
	}
	everything := labels.Everything()
	ps, _ := podLister.List(everything)
	svcs, _ := svcLister.List(everything)
	sls, _ := sliceLister.List(everything)
	nss, _ := nsLister.List(everything)
	return AmbientInput(ps, svcs, sls, nss)
}

// AmbientInput maps Kubernetes objects to what ztunnel's compiler reads:
// pods and services sorted by namespace/name, a service without a
// selector with the pods its EndpointSlices name.
func AmbientInput(ps []*corev1.Pod, svcs []*corev1.Service, sls []*discoveryv1.EndpointSlice, nss []*corev1.Namespace) (pods []*ambient.Pod, services []*ambient.Service, namespaces []*ambient.Namespace) {
	for _, p := range ps {
		pods = append(pods, AmbientPod(p))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name })
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, sl := range sls {
		if n, ok := sl.Labels[discoveryv1.LabelServiceName]; ok {
			bySvc[sl.Namespace+"/"+n] = append(bySvc[sl.Namespace+"/"+n], sl)
		}
	}
	for _, s := range svcs {
		as := AmbientService(s)
		if s.Spec.Selector == nil {
			for _, sl := range bySvc[s.Namespace+"/"+s.Name] {
				for _, e := range sl.Endpoints {
					if e.TargetRef != nil && e.TargetRef.Kind == "Pod" && (e.TargetRef.Namespace == "" || e.TargetRef.Namespace == s.Namespace) {
						as.Endpoints = append(as.Endpoints, e.TargetRef.Name)
					}
				}
			}
			sort.Strings(as.Endpoints)
		}
		services = append(services, as)
	}
	sort.Slice(services, func(i, j int) bool {
		return services[i].Namespace+"/"+services[i].Name < services[j].Namespace+"/"+services[j].Name
	})
	for _, n := range nss {
		namespaces = append(namespaces, &ambient.Namespace{Name: n.Name, Labels: n.Labels, Annotations: n.Annotations})
	}
	return pods, services, namespaces
}

// AmbientPod is what ztunnel's compiler reads of a pod.
func AmbientPod(p *corev1.Pod) *ambient.Pod {
	out := &ambient.Pod{Name: p.Name, Namespace: p.Namespace, GenerateName: p.GenerateName, Labels: p.Labels, Annotations: p.Annotations,
		ServiceAccount: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, Phase: string(p.Status.Phase),
		Deleting: p.DeletionTimestamp != nil, HostNetwork: p.Spec.HostNetwork, Created: p.CreationTimestamp.Time}
	for _, ip := range p.Status.PodIPs {
		out.IPs = append(out.IPs, ip.IP)
	}
	if len(out.IPs) == 0 && p.Status.PodIP != "" {
		out.IPs = []string{p.Status.PodIP}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			out.Controller = &ambient.Owner{Kind: o.Kind, Name: o.Name}
		}
	}
	// A named targetPort resolves to a TCP container port, of an app
	// container or a native sidecar (an init container that keeps
	// running), the first of the name winning (Istio's FindPortName).
	for _, c := range podcache.NamedPortContainers(p) {
		for _, cp := range c.Ports {
			if cp.Name == "" || (cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP) {
				continue
			}
			if out.ContainerPorts == nil {
				out.ContainerPorts = map[string]uint32{}
			}
			if _, dup := out.ContainerPorts[cp.Name]; !dup {
				out.ContainerPorts[cp.Name] = uint32(cp.ContainerPort)
			}
		}
	}
	return out
}

// AmbientService is what ztunnel's compiler reads of a Service (its
// EndpointSlices' pods are added by Ambient).
func AmbientService(s *corev1.Service) *ambient.Service {
	out := &ambient.Service{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels, Annotations: s.Annotations, Selector: s.Spec.Selector,
		ExternalName: s.Spec.Type == corev1.ServiceTypeExternalName, ClusterIPs: s.Spec.ClusterIPs,
		PublishNotReadyAddresses: s.Spec.PublishNotReadyAddresses, Created: s.CreationTimestamp.Time}
	if len(out.ClusterIPs) == 0 && s.Spec.ClusterIP != "" {
		out.ClusterIPs = []string{s.Spec.ClusterIP}
	}
	for _, f := range s.Spec.IPFamilies {
		out.IPFamilies = append(out.IPFamilies, string(f))
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal {
		out.InternalTrafficPolicyLocal = true
	}
	if s.Spec.TrafficDistribution != nil {
		out.TrafficDistribution = *s.Spec.TrafficDistribution
	}
	for _, p := range s.Spec.Ports {
		sp := ambient.ServicePort{Name: p.Name, Port: uint32(p.Port), Protocol: string(p.Protocol)}
		if p.AppProtocol != nil {
			sp.AppProtocol = *p.AppProtocol
		}
		if p.TargetPort.StrVal != "" {
			sp.TargetPortName = p.TargetPort.StrVal
		} else {
			sp.TargetPort = uint32(p.TargetPort.IntVal)
		}
		out.Ports = append(out.Ports, sp)
	}
	return out
}
