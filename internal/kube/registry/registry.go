// Package registry is the xDS service registry of a cluster: Services,
// their EndpointSlices and the Pods behind them, turned into the xds
// model's services.
package registry

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/podcache"
	"github.com/wardenmesh/warden/xds"
)

// ExportToAnnotation is Istio's Service annotation limiting which
// namespaces see a service: comma-separated namespaces, "." or "*".
const ExportToAnnotation = "networking.istio.io/exportTo"

// Watcher follows the xDS service registry of a cluster: Services,
// their EndpointSlices, and the Pods behind the endpoints (for the labels
// that DestinationRule subsets select and the service account that names
// the identity a client must see). Every replica runs one.
type Watcher struct {
	Client   kubernetes.Interface
	Domain   string        // cluster DNS domain, default cluster.local
	Resync   time.Duration // default 10m
	Log      *slog.Logger
	OnChange func() // called after every change; keep it cheap
	// Pods is the replica's shared pod cache (podcache), which its owner
	// runs; nil: Run watches pods itself.
	Pods *podcache.Cache

	mu         sync.Mutex
	synced     chan struct{}
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
}

// Run watches until ctx is done.
func (r *Watcher) Run(ctx context.Context) error {
	if r.Log == nil {
		r.Log = slog.New(slog.DiscardHandler)
	}
	if r.Resync == 0 {
		r.Resync = 10 * time.Minute
	}
	f := informers.NewSharedInformerFactoryWithOptions(r.Client, r.Resync)
	svcs := f.Core().V1().Services()
	slices := f.Discovery().V1().EndpointSlices()
	nss := f.Core().V1().Namespaces()
	factories := []kube.InformerFactory{f}
	pods := r.Pods
	if pods == nil {
		var err error
		if pods, err = podcache.New(r.Client, 0); err != nil {
			return err
		}
		factories = append(factories, pods)
		defer pods.Shutdown()
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.changed() },
		UpdateFunc: func(o, n any) { r.changed() },
		DeleteFunc: func(any) { r.changed() },
	}
	for _, inf := range []cache.SharedIndexInformer{svcs.Informer(), slices.Informer(), nss.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	// The shared pod informer outlives this Run (its owner's): the
	// handler is removed when Run ends. Pods are not resynced: the
	// other informers' resyncs already rebuild the registry.
	reg, err := pods.Informer().AddEventHandler(handler)
	if err != nil {
		return err
	}
	defer func() { _ = pods.Informer().RemoveEventHandler(reg) }()
	r.mu.Lock()
	r.services, r.slices, r.pods, r.namespaces = svcs.Lister(), slices.Lister(), pods.Lister(), nss.Lister()
	r.mu.Unlock()
	err = kube.StartAndSync(ctx, "service registry", factories...)
	if err == nil {
		err = pods.WaitSynced(ctx)
	}
	if err != nil {
		f.Shutdown()
		if ctx.Err() != nil {
			return nil // stopped before the first list finished: not a failure
		}
		return err
	}
	close(r.Synced())
	r.changed()
	<-ctx.Done()
	f.Shutdown()
	return nil
}

// Synced is closed once Services, EndpointSlices and Pods are listed.
func (r *Watcher) Synced() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.synced == nil {
		r.synced = make(chan struct{})
	}
	return r.synced
}

func (r *Watcher) changed() {
	if r.OnChange != nil {
		r.OnChange()
	}
}

// slimPod is what the pod cache keeps of a pod (podcache.Slim): for
// the registry, for sidecars the labels and service account; for
// ztunnel (Ambient) also the pod's addresses, node, phase, readiness,
// controller, named container ports and istio-cni's redirection
// annotation.
var slimPod = podcache.Slim

// Services builds the registry from the informers' current state, sorted
// by host. Before Run has listed, it is empty.
func (r *Watcher) Services() []*xds.Service {
	r.mu.Lock()
	svcLister, sliceLister, podLister := r.services, r.slices, r.pods
	r.mu.Unlock()
	if svcLister == nil {
		return nil
	}
	domain := r.Domain
	if domain == "" {
		domain = xds.DefaultDomain
	}
	svcs, err := svcLister.List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []*xds.Service
	for _, svc := range svcs {
		s := ServiceFromKubernetes(svc, domain)
		if s == nil {
			continue
		}
		slices, _ := sliceLister.EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
		sort.Slice(slices, func(i, j int) bool { return slices[i].Name < slices[j].Name })
		for _, sl := range slices {
			s.Endpoints = append(s.Endpoints, EndpointsFromSlice(sl, func(name string) *corev1.Pod {
				p, err := podLister.Pods(sl.Namespace).Get(name)
				if err != nil {
					return nil
				}
				return p
			})...)
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

// ServiceFromKubernetes maps a Service to a registry entry without
// endpoints. ExternalName services and services with no TCP port are
// left out (nil): a sidecar proxies neither.
func ServiceFromKubernetes(svc *corev1.Service, domain string) *xds.Service {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	s := &xds.Service{
		Host:      fmt.Sprintf("%s.%s.svc.%s", svc.Name, svc.Namespace, domain),
		Name:      svc.Name,
		Namespace: svc.Namespace,
	}
	switch {
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		s.Headless = true
	case len(svc.Spec.ClusterIPs) > 0:
		s.Addresses = append(s.Addresses, svc.Spec.ClusterIPs...)
	case svc.Spec.ClusterIP != "":
		s.Addresses = []string{svc.Spec.ClusterIP}
	}
	if v, ok := svc.Annotations[ExportToAnnotation]; ok {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				s.ExportTo = append(s.ExportTo, e)
			}
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		sp := xds.ServicePort{Number: uint32(p.Port), Name: p.Name, Protocol: appProtocol(p.AppProtocol)}
		if p.TargetPort.IntVal > 0 {
			sp.TargetPort = uint32(p.TargetPort.IntVal)
		}
		s.Ports = append(s.Ports, sp)
	}
	if len(s.Ports) == 0 {
		return nil
	}
	return s
}

// appProtocol maps a port's appProtocol to the registry's protocol names;
// empty means "from the port name's prefix" (Istio's convention).
func appProtocol(p *string) string {
	if p == nil {
		return ""
	}
	switch strings.ToLower(*p) {
	case "http":
		return "HTTP"
	case "http2", "kubernetes.io/h2c":
		return "HTTP2"
	case "grpc":
		return "GRPC"
	case "grpc-web":
		return "GRPC-WEB"
	case "tcp", "https", "tls", "kubernetes.io/ws", "kubernetes.io/wss":
		return "TCP"
	}
	return ""
}

// EndpointsFromSlice maps the ready IP endpoints of an EndpointSlice to
// registry endpoints. The slice's ports carry the resolved target port of
// each service port (by name); labels and service account come from the
// endpoint's Pod, when pod finds it.
func EndpointsFromSlice(sl *discoveryv1.EndpointSlice, pod func(name string) *corev1.Pod) []xds.Endpoint {
	if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
		return nil
	}
	ports := map[string]uint32{}
	for _, p := range sl.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		ports[name] = uint32(*p.Port)
	}
	var out []xds.Endpoint
	for _, e := range sl.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		var lbls map[string]string
		sa := ""
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" && pod != nil {
			if p := pod(e.TargetRef.Name); p != nil {
				lbls, sa = p.Labels, p.Spec.ServiceAccountName
				if sa == "" {
					sa = "default"
				}
			}
		}
		for _, addr := range e.Addresses {
			out = append(out, xds.Endpoint{Address: addr, Ports: ports, Labels: lbls, ServiceAccount: sa})
		}
	}
	return out
}
