package kubetest

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wardenmesh/warden/ca"
)

func ptr[T any](v T) *T { return &v }

// CacertsSecret is Istio's plugged-in CA Secret cacerts in ns, holding m.
func CacertsSecret(ns string, m *ca.Material) *corev1.Secret {
	f, _ := m.Encode()
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: ns},
		Data:       map[string][]byte{"ca-cert.pem": f.CACert, "ca-key.pem": f.CAKey, "cert-chain.pem": f.CertChain, "root-cert.pem": f.RootCert},
	}
}

// MeshApp creates, in ns, a Service "reviews" with port http 9080 ->
// 8080, a Pod per version running as service account reviews, and an
// EndpointSlice holding the pods' IPs (envtest runs no controller
// manager: the slice is written as the EndpointSlice controller would).
func (s *Server) MeshApp(t testing.TB, ns string, ips map[string]string) {
	t.Helper()
	ctx := context.Background()
	s.ServiceAccount(t, ns, "reviews")
	if _, err := s.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "reviews"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "reviews"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "reviews-a", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for _, version := range []string{"v1", "v2"} {
		name := "reviews-" + version
		if _, err := s.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "reviews", "version": version}},
			Spec:       corev1.PodSpec{ServiceAccountName: "reviews", Containers: []corev1.Container{{Name: "app", Image: "example.org/reviews:" + version}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ips[version]},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name},
		})
	}
	if _, err := s.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// AddReviewsSlice adds a second EndpointSlice to MeshApp's reviews: ip,
// pod reviews-v2, ready condition unset.
func (s *Server) AddReviewsSlice(t testing.TB, ns, ip string) {
	t.Helper()
	if _, err := s.Client.DiscoveryV1().EndpointSlices(ns).Create(context.Background(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "reviews-b", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "reviews-v2"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
