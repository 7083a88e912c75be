package registry_test

import (
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/xds"
)

func ptr[T any](v T) *T { return &v }

func TestServiceFromKubernetes(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "bookinfo", Annotations: map[string]string{registry.ExportToAnnotation: " ., istio-system "}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.3.4", ClusterIPs: []string{"10.96.3.4", "fd00::34"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)},
			{Name: "metrics", Port: 9090, TargetPort: intstr.FromString("prom"), AppProtocol: ptr("kubernetes.io/h2c")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		}},
	}
	got := registry.ServiceFromKubernetes(svc, "example.org")
	want := &xds.Service{
		Host: "reviews.bookinfo.svc.example.org", Name: "reviews", Namespace: "bookinfo",
		ExportTo:  []string{".", "istio-system"},
		Addresses: []string{"10.96.3.4", "fd00::34"},
		Ports: []xds.ServicePort{
			{Number: 9080, Name: "http", TargetPort: 8080},
			{Number: 9090, Name: "metrics", Protocol: "HTTP2"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	headless := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "x"}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432}}}}
	if s := registry.ServiceFromKubernetes(headless, "cluster.local"); !s.Headless || len(s.Addresses) != 0 {
		t.Fatalf("headless service: %+v", s)
	}
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "x"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}}
	if s := registry.ServiceFromKubernetes(ext, "cluster.local"); s != nil {
		t.Fatalf("ExternalName service mapped: %+v", s)
	}
	udp := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns", Namespace: "x"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 53, Protocol: corev1.ProtocolUDP}}}}
	if s := registry.ServiceFromKubernetes(udp, "cluster.local"); s != nil {
		t.Fatalf("UDP-only service mapped: %+v", s)
	}
}

func TestEndpointsFromSlice(t *testing.T) {
	pods := map[string]*corev1.Pod{
		"v1": {ObjectMeta: metav1.ObjectMeta{Name: "v1", Labels: map[string]string{"version": "v1"}}, Spec: corev1.PodSpec{ServiceAccountName: "reviews"}},
		"v2": {ObjectMeta: metav1.ObjectMeta{Name: "v2", Labels: map[string]string{"version": "v2"}}},
	}
	sl := &discoveryv1.EndpointSlice{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(8080))},
			{Name: ptr("dns"), Port: ptr(int32(53)), Protocol: ptr(corev1.ProtocolUDP)},
		},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "v1"}},
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "v1"}},
			{Addresses: []string{"10.0.0.3"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "v2"}},
			{Addresses: []string{"10.0.0.4"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "gone"}},
		},
	}
	got := registry.EndpointsFromSlice(sl, func(name string) *corev1.Pod { return pods[name] })
	ports := map[string]uint32{"http": 8080}
	want := []xds.Endpoint{
		{Address: "10.0.0.1", Ports: ports, Labels: map[string]string{"version": "v1"}, ServiceAccount: "reviews"},
		{Address: "10.0.0.3", Ports: ports, Labels: map[string]string{"version": "v2"}, ServiceAccount: "default"},
		{Address: "10.0.0.4", Ports: ports},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	sl.AddressType = discoveryv1.AddressTypeFQDN
	if got := registry.EndpointsFromSlice(sl, nil); got != nil {
		t.Fatalf("FQDN slice mapped: %+v", got)
	}
}

// TestServiceRegistryFollowsTheCluster: the registry lists Services with
// their EndpointSlices' ready addresses, the Pods' labels and service
// accounts, and follows changes: a pod going unready, a slice added, a
// Service deleted. ExternalName Services are left out.
func TestServiceRegistryFollowsTheCluster(t *testing.T) {
	ns := apiserver.Namespace(t, "reg")
	ctx := kubetest.Context(t)
	apiserver.MeshApp(t, ns, map[string]string{"v1": "10.10.0.1", "v2": "10.10.0.2"})
	if _, err := apiserver.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var changes atomic.Int64
	reg := &registry.Watcher{Client: apiserver.Client, OnChange: func() { changes.Add(1) }}
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	select {
	case <-reg.Synced():
	case err := <-done:
		t.Fatalf("registry stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("registry did not sync")
	}
	host := "reviews." + ns + ".svc.cluster.local"
	find := func() (*xds.Service, error) {
		for _, s := range reg.Services() {
			if s.Namespace != ns {
				continue
			}
			if s.Host != host {
				return nil, fmt.Errorf("unexpected service %s", s.Host)
			}
			return s, nil
		}
		return nil, fmt.Errorf("%s not in the registry", host)
	}
	// endpoints says whether reviews' endpoints are want, as
	// address/version label/service account.
	endpoints := func(want ...string) error {
		svc, err := find()
		if err != nil {
			return err
		}
		var got []string
		for _, e := range svc.Endpoints {
			got = append(got, e.Address+"/"+e.Labels["version"]+"/"+e.ServiceAccount)
		}
		if !reflect.DeepEqual(got, want) {
			return fmt.Errorf("endpoints %v, want %v", got, want)
		}
		return nil
	}
	if err := endpoints("10.10.0.1/v1/reviews", "10.10.0.2/v2/reviews"); err != nil {
		t.Fatal(err)
	}
	svc, err := find()
	if err != nil {
		t.Fatal(err)
	}
	if p := svc.Ports; len(p) != 1 || p[0].Number != 9080 || svc.Endpoints[0].Ports["http"] != 8080 {
		t.Fatalf("ports %+v, endpoint ports %v", p, svc.Endpoints[0].Ports)
	}

	// v1 goes unready; a second slice brings a third address.
	before := changes.Load()
	sl, err := apiserver.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "reviews-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints[0].Conditions.Ready = ptr(false)
	if _, err := apiserver.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	apiserver.AddReviewsSlice(t, ns, "10.10.0.3")
	kubetest.Eventually(t, 20*time.Second, func() error { return endpoints("10.10.0.2/v2/reviews", "10.10.0.3/v2/reviews") })
	if changes.Load() == before {
		t.Fatal("OnChange was not called for the slice changes")
	}

	// A pod relabelled: the subset labels follow.
	pod, err := apiserver.Client.CoreV1().Pods(ns).Get(ctx, "reviews-v2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Labels["version"] = "v3"
	if _, err := apiserver.Client.CoreV1().Pods(ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error { return endpoints("10.10.0.2/v3/reviews", "10.10.0.3/v3/reviews") })

	if err := apiserver.Client.CoreV1().Services(ns).Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		for _, s := range reg.Services() {
			if s.Namespace == ns {
				return fmt.Errorf("%s still listed", s.Host)
			}
		}
		return nil
	})
}
