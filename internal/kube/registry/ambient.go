package registry

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

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
	for _, p := range ps {
		pods = append(pods, AmbientPod(p))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Namespace+"/"+pods[i].Name < pods[j].Namespace+"/"+pods[j].Name })
	svcs, _ := svcLister.List(everything)
	for _, s := range svcs {
		as := AmbientService(s)
		if s.Spec.Selector == nil {
			slices, _ := sliceLister.EndpointSlices(s.Namespace).List(labels.SelectorFromSet(labels.Set{"kubernetes.io/service-name": s.Name}))
			for _, sl := range slices {
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
	nss, _ := nsLister.List(everything)
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
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != "" {
				if out.ContainerPorts == nil {
					out.ContainerPorts = map[string]uint32{}
				}
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
