// Package podcache is a replica's one watch of its cluster's pods, which
// the service registry, the node authorizer and the pod-certificate
// signer share: a cluster's pods are many (tens of thousands), and a
// watch and a cache each would keep every pod up to three times per
// replica and hold three watches open on the API server.
package podcache

import (
	"context"
	"fmt"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/xds/ambient"
)

// Cache is the cluster's pods, every phase, each slimmed (Slim) to what
// its readers need. Readers register indexers and event handlers on
// Informer (before or after Run starts it) or read Lister; the owner
// runs it once, independently of leadership.
type Cache struct {
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   corelisters.PodLister
}

// A reader that owns its cache (a test's, a one-off) starts it with its
// own informer factories.
var _ kube.InformerFactory = (*Cache)(nil)

// New is a cache of client's pods; resync is the informer's default
// resync period for handlers (0: none).
func New(client kubernetes.Interface, resync time.Duration) (*Cache, error) {
	f := informers.NewSharedInformerFactory(client, resync)
	pods := f.Core().V1().Pods()
	if err := pods.Informer().SetTransform(Slim); err != nil {
		return nil, fmt.Errorf("podcache: %w", err)
	}
	return &Cache{factory: f, informer: pods.Informer(), lister: pods.Lister()}, nil
}

// Informer is the shared pod informer.
func (c *Cache) Informer() cache.SharedIndexInformer { return c.informer }

// Lister reads the cache.
func (c *Cache) Lister() corelisters.PodLister { return c.lister }

// HasSynced says whether the first list has completed.
func (c *Cache) HasSynced() bool { return c.informer.HasSynced() }

// WaitSynced waits for the first list, or ctx.
func (c *Cache) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced) {
		return ctx.Err()
	}
	return nil
}

// Start starts the watch until stop (kube.InformerFactory).
func (c *Cache) Start(stop <-chan struct{}) { c.factory.Start(stop) }

// WaitForCacheSync is the factory's (kube.InformerFactory).
func (c *Cache) WaitForCacheSync(stop <-chan struct{}) map[reflect.Type]bool {
	return c.factory.WaitForCacheSync(stop)
}

// Shutdown waits for a started watch to end (after its stop channel
// closed).
func (c *Cache) Shutdown() { c.factory.Shutdown() }

// Run watches until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	<-ctx.Done()
	c.factory.Shutdown()
	return nil
}

// Slim keeps of a pod the union of what its readers read, and drops the
// rest (most of a pod's spec and status):
//
// The node authorizer (nodeauth), which decides which node proxy may
// have which pod's certificate, reads: namespace and name (the lookup),
// UID (the token's pod is this pod, not an earlier one of the name),
// spec.serviceAccountName and spec.nodeName (the account's pods on the
// caller's node) and status.phase (a Failed pod is not on its node).
//
// The pod-certificate signer (podcert) reads: namespace and name, UID,
// spec.nodeName, spec.serviceAccountName, status.phase (a finished pod
// gets no certificate) and the signer names of the pod's
// podCertificate projected volumes.
//
// The service registry reads, for sidecars, labels and service account;
// for ztunnel (Ambient) also generateName, creation and deletion
// timestamps, the addresses (podIP, podIPs), node, hostNetwork, phase,
// the Ready condition, the controller owner reference, named container
// ports (of containers and native sidecars) and istio-cni's redirection
// annotation.
//
// ResourceVersion is kept for the informer itself. TestSlimKeeps lists
// every field here; dropping one fails it.
func Slim(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, GenerateName: p.GenerateName, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp, CreationTimestamp: p.CreationTimestamp},
		Spec:   corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName, NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	if v, ok := p.Annotations[ambient.RedirectionAnnotation]; ok {
		out.Annotations = map[string]string{ambient.RedirectionAnnotation: v}
	}
	if c := metav1.GetControllerOf(p); c != nil {
		out.OwnerReferences = []metav1.OwnerReference{*c}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	var ports []corev1.ContainerPort
	for _, c := range NamedPortContainers(p) {
		for _, cp := range c.Ports {
			if cp.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol})
			}
		}
	}
	if len(ports) > 0 {
		out.Spec.Containers = []corev1.Container{{Ports: ports}}
	}
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.PodCertificate != nil {
				out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
					Sources: []corev1.VolumeProjection{{PodCertificate: &corev1.PodCertificateProjection{SignerName: src.PodCertificate.SignerName}}},
				}}})
			}
		}
	}
	return out, nil
}

// NamedPortContainers are the containers whose ports a Service may name:
// the pod's containers, then its native sidecars (init containers that
// keep running).
func NamedPortContainers(p *corev1.Pod) []corev1.Container {
	out := p.Spec.Containers
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			out = append(out[:len(out):len(out)], c)
		}
	}
	return out
}
