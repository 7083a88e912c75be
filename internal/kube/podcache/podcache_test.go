package podcache_test

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/kube/podcache"
	"github.com/wardenmesh/warden/xds/ambient"
)

func ptr[T any](v T) *T { return &v }

// fullPod has every field a reader reads set, and many it does not.
func fullPod() *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	now := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", GenerateName: "web-", UID: "uid-1", ResourceVersion: "42",
			Labels: map[string]string{"app": "web"}, CreationTimestamp: now, DeletionTimestamp: &now,
			Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
			OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-abc", UID: "rs", Controller: ptr(true)},
				{APIVersion: "v1", Kind: "ConfigMap", Name: "other", UID: "cm"},
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-a", HostNetwork: true,
			Containers: []corev1.Container{{Name: "app", Image: "web:1", Env: []corev1.EnvVar{{Name: "X", Value: "y"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9090}}}},
			InitContainers: []corev1.Container{{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}}}},
			Volumes: []corev1.Volume{
				{Name: "creds", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{PodCertificate: &corev1.PodCertificateProjection{SignerName: "wardenmesh.io/spiffe", KeyType: "ECDSAP256", CredentialBundlePath: "b.pem"}},
				}}}},
				{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			HostIP: "192.168.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, Reason: "r", LastTransitionTime: now}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true}}},
	}
}

// TestSlimKeeps: every field a reader of the cache decides on survives
// Slim, named with its reader. Confinement rests on the first group:
// the node authorizer decides which node proxy may have which pod's
// certificate from these alone.
func TestSlimKeeps(t *testing.T) {
	kept := []struct {
		reader, field string
		get           func(*corev1.Pod) any
	}{
		{"nodeauth, podcert, registry", "metadata.namespace", func(p *corev1.Pod) any { return p.Namespace }},
		{"nodeauth, podcert, registry", "metadata.name", func(p *corev1.Pod) any { return p.Name }},
		{"nodeauth, podcert", "metadata.uid", func(p *corev1.Pod) any { return p.UID }},
		{"nodeauth, podcert, registry", "spec.serviceAccountName", func(p *corev1.Pod) any { return p.Spec.ServiceAccountName }},
		{"nodeauth, podcert, registry", "spec.nodeName", func(p *corev1.Pod) any { return p.Spec.NodeName }},
		{"nodeauth, podcert, registry", "status.phase", func(p *corev1.Pod) any { return p.Status.Phase }},
		{"podcert", "spec.volumes[].projected.sources[].podCertificate.signerName", func(p *corev1.Pod) any {
			var out []string
			for _, v := range p.Spec.Volumes {
				if v.Projected != nil {
					for _, s := range v.Projected.Sources {
						if s.PodCertificate != nil {
							out = append(out, v.Name+":"+s.PodCertificate.SignerName)
						}
					}
				}
			}
			return out
		}},
		{"registry", "metadata.deletionTimestamp", func(p *corev1.Pod) any { return p.DeletionTimestamp }},
		{"registry", "metadata.creationTimestamp", func(p *corev1.Pod) any { return p.CreationTimestamp }},
		{"registry", "metadata.generateName", func(p *corev1.Pod) any { return p.GenerateName }},
		{"registry", "metadata.labels", func(p *corev1.Pod) any { return p.Labels }},
		{"registry", "the redirection annotation", func(p *corev1.Pod) any { return p.Annotations[ambient.RedirectionAnnotation] }},
		{"registry", "the controller", func(p *corev1.Pod) any { return metav1.GetControllerOf(p) }},
		{"registry", "spec.hostNetwork", func(p *corev1.Pod) any { return p.Spec.HostNetwork }},
		{"registry", "status.podIP", func(p *corev1.Pod) any { return p.Status.PodIP }},
		{"registry", "status.podIPs", func(p *corev1.Pod) any { return p.Status.PodIPs }},
		{"registry", "the Ready condition", func(p *corev1.Pod) any {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady {
					return c.Status
				}
			}
			return nil
		}},
		{"registry", "named container ports", func(p *corev1.Pod) any {
			out := map[string]int32{}
			for _, c := range podcache.NamedPortContainers(p) {
				for _, cp := range c.Ports {
					if cp.Name != "" {
						out[cp.Name] = cp.ContainerPort
					}
				}
			}
			return out
		}},
		{"the informer", "metadata.resourceVersion", func(p *corev1.Pod) any { return p.ResourceVersion }},
	}
	full := fullPod()
	o, err := podcache.Slim(full)
	if err != nil {
		t.Fatal(err)
	}
	slim := o.(*corev1.Pod)
	for _, k := range kept {
		want := k.get(full)
		if reflect.ValueOf(want).IsZero() {
			t.Fatalf("the test pod leaves %s empty: the test could not see it dropped", k.field)
		}
		if got := k.get(slim); !reflect.DeepEqual(got, want) {
			t.Errorf("%s (read by %s): slimmed %v, was %v", k.field, k.reader, got, want)
		}
	}
}

// TestSlimDrops: what no reader reads is not kept (the point of Slim).
func TestSlimDrops(t *testing.T) {
	o, _ := podcache.Slim(fullPod())
	p := o.(*corev1.Pod)
	for field, left := range map[string]bool{
		"managedFields":            p.ManagedFields != nil,
		"other annotations":        len(p.Annotations) != 1,
		"other owner references":   len(p.OwnerReferences) != 1,
		"container images and env": len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Image != "" || p.Spec.Containers[0].Env != nil,
		"unnamed container ports":  len(p.Spec.Containers[0].Ports) != 2,
		"init containers":          p.Spec.InitContainers != nil,
		"other volumes":            len(p.Spec.Volumes) != 1 || p.Spec.Volumes[0].Projected.Sources[0].PodCertificate.KeyType != "",
		"hostIP":                   p.Status.HostIP != "",
		"other conditions":         len(p.Status.Conditions) != 1 || !p.Status.Conditions[0].LastTransitionTime.IsZero(),
		"container statuses":       p.Status.ContainerStatuses != nil,
	} {
		if left {
			t.Errorf("Slim kept %s", field)
		}
	}
}

// TestSlimTombstone: a deleted pod's tombstone passes as it is.
func TestSlimTombstone(t *testing.T) {
	in := "not a pod"
	if o, err := podcache.Slim(in); err != nil || o != in {
		t.Errorf("Slim(%q) = %v, %v", in, o, err)
	}
}
