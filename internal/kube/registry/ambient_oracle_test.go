package registry_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

// ambientMesh is a generated cluster: namespaces in and out of ambient,
// pods of Deployments on three nodes (ready, not ready, pending without
// an IP, finished, on the host network, not redirected), Services with
// and without selectors (named and numeric target ports, appProtocol,
// headless, ExternalName, Local traffic policy, publishNotReadyAddresses,
// dual stack, traffic distribution), and the EndpointSlice of the
// selector-less one.
type ambientMesh struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	slices     []*discoveryv1.EndpointSlice
}

func generateMesh() *ambientMesh {
	m := &ambientMesh{}
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{
		{"istio-system", nil},
		{"shop", map[string]string{ambient.DataplaneModeLabel: "ambient"}},
		{"pay", map[string]string{ambient.DataplaneModeLabel: "ambient"}},
		{"legacy", nil},
	} {
		m.namespaces = append(m.namespaces, &corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: ns.labels}})
	}
	nodes := []string{"node-a", "node-b", "node-c"}
	ip := 10
	for _, ns := range []string{"shop", "pay", "legacy"} {
		for ai, app := range []string{"web", "api"} {
			for r := 0; r < 2; r++ {
				ip++
				hash := fmt.Sprintf("%s%d", app[:1], 7+ai)
				p := &corev1.Pod{
					TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%d", app, hash, r), Namespace: ns, GenerateName: app + "-" + hash + "-",
						Labels:          map[string]string{"app": app, "version": fmt.Sprintf("v%d", r+1), "pod-template-hash": hash},
						OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: app + "-" + hash, UID: "rs", Controller: ptr(true)}}},
					Spec: corev1.PodSpec{ServiceAccountName: app, NodeName: nodes[ip%3], Containers: []corev1.Container{{Name: "app", Image: "example.org/" + app,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {Name: "grpc", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
							{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP}}}}},
					Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.1.0.%d", ip), PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.1.0.%d", ip)}},
						Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
				}
				if ns != "legacy" {
					p.Annotations = map[string]string{ambient.RedirectionAnnotation: "enabled"}
				}
				if r == 1 && app == "api" {
					p.Status.Conditions[0].Status = corev1.ConditionFalse
				}
				m.pods = append(m.pods, p)
			}
		}
	}
	extra := func(name string, mod func(p *corev1.Pod)) {
		ip++
		p := &corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{"app": name}, Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled"}},
			Spec:       corev1.PodSpec{ServiceAccountName: name, NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "example.org/x"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.1.0.%d", ip), PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.1.0.%d", ip)}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
		mod(p)
		m.pods = append(m.pods, p)
	}
	extra("pending", func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} })
	extra("done", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	extra("hostnet", func(p *corev1.Pod) {
		p.Spec.HostNetwork = true
		p.Status.PodIP = "192.168.0.1"
		p.Status.PodIPs = []corev1.PodIP{{IP: "192.168.0.1"}}
	})
	extra("optout", func(p *corev1.Pod) {
		p.Labels[ambient.DataplaneModeLabel] = "none"
		p.Annotations = nil
	})
	extra("dual", func(p *corev1.Pod) {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::21"})
		p.Labels["service.istio.io/canonical-name"] = "dual-canon"
		p.Labels["app.kubernetes.io/version"] = "3"
	})
	extra("manual-backend", func(p *corev1.Pod) {})
	extra("unlabelled", func(p *corev1.Pod) { p.Labels = nil })
	extra("ztunnel-x", func(p *corev1.Pod) {
		p.Namespace = "istio-system"
		p.Annotations = nil
		p.Spec.ServiceAccountName = "ztunnel"
	})

	svc := func(ns, name string, mod func(s *corev1.Service)) {
		s := &corev1.Service{TypeMeta: metav1.TypeMeta{Kind: "Service", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, ClusterIP: fmt.Sprintf("10.96.%d.%d", len(m.services)/200, len(m.services)%200+1),
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}, {Name: "grpc-api", Port: 90, TargetPort: intstr.FromInt32(9090)},
					{Name: "tcp-dns", Port: 5353, TargetPort: intstr.FromString("dns")}}}}
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
		mod(s)
		m.services = append(m.services, s)
	}
	for _, ns := range []string{"shop", "pay", "legacy"} {
		svc(ns, "web", func(s *corev1.Service) {})
		svc(ns, "api", func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Name: "api", Port: 8000, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr("kubernetes.io/h2c")},
				{Name: "metrics", Port: 9000, TargetPort: intstr.FromString("missing")}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
		})
	}
	svc("shop", "headless", func(s *corev1.Service) {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
	})
	svc("shop", "external", func(s *corev1.Service) {
		s.Spec.Type, s.Spec.ExternalName, s.Spec.Selector, s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ServiceTypeExternalName, "db.example.com", nil, "", nil
	})
	svc("shop", "local", func(s *corev1.Service) {
		s.Spec.Selector = map[string]string{"app": "web"}
		s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
	})
	svc("shop", "notready", func(s *corev1.Service) {
		s.Spec.Selector = map[string]string{"app": "api"}
		s.Spec.PublishNotReadyAddresses = true
		s.Annotations = map[string]string{"networking.istio.io/traffic-distribution": "PreferClose"}
	})
	svc("shop", "dual", func(s *corev1.Service) {
		s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:96::9")
		s.Spec.TrafficDistribution = ptr("PreferSameNode")
	})
	svc("shop", "manual", func(s *corev1.Service) { s.Spec.Selector = nil })
	m.slices = append(m.slices, &discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{Kind: "EndpointSlice", APIVersion: "discovery.k8s.io/v1"},
		ObjectMeta:  metav1.ObjectMeta{Name: "manual-1", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "manual"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.36"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "manual-backend"}}}})
	return m
}

func (m *ambientMesh) yaml(t *testing.T) string {
	t.Helper()
	var docs []string
	add := func(o any) {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	for _, o := range m.namespaces {
		add(o)
	}
	for _, o := range m.pods {
		add(o)
	}
	for _, o := range m.services {
		add(o)
	}
	for _, o := range m.slices {
		add(o)
	}
	return strings.Join(docs, "\n---\n")
}

// ambientPolicies are the configuration of the cases: ServiceEntries and
// AuthorizationPolicies of every scope and action with every field
// ztunnel reads or cannot read, and PeerAuthentication sets that
// exercise Istio's inheritance and port-level conversions.
const ambientEntries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments-api, namespace: pay}
spec:
  hosts: [api.payments.example.com]
  addresses: [240.0.0.10]
  ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - {address: 203.0.113.7, serviceAccount: payments, ports: {http: 8081}, weight: 3, locality: us-east1/b}
  - {address: 203.0.113.8, labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-only, namespace: pay}
spec:
  hosts: [a.example.org, b.example.org]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough, namespace: shop}
spec:
  hosts: [any.example.net]
  addresses: [198.51.100.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: NONE
  subjectAltNames: [spiffe://cluster.local/ns/shop/sa/db]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web-se, namespace: shop}
spec:
  hosts: [web.internal.shop]
  addresses: [240.0.0.20]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
`

const ambientAuthz = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: global-deny, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [203.0.113.0/24], notPrincipals: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-web, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {namespaces: [shop, "pay*", "*-prod"]}}]
    to: [{operation: {ports: ["8080"], notPorts: ["9090"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-allow, namespace: shop}
spec:
  rules:
  - from: [{source: {serviceAccounts: [web, pay/api], notServiceAccounts: [legacy/web]}}]
  - when:
    - {key: source.ip, values: [10.1.0.0/16], notValues: [10.1.0.99]}
    - {key: destination.port, values: ["8080"]}
    - {key: source.principal, values: [cluster.local/ns/shop/sa/web]}
    - {key: source.namespace, notValues: [legacy]}
    - {key: destination.ip, values: ["10.1.0.11"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-l7, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - to: [{operation: {methods: [GET], paths: [/public/*]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
  - when: [{key: "request.headers[x-user]", values: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-deny-l7, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from: [{source: {namespaces: [legacy], remoteIpBlocks: [1.2.3.4]}}]
    to: [{operation: {hosts: [evil.example.com], ports: ["9090"]}}]
  - when: [{key: "request.auth.claims[iss]", values: [bad]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: pay}
spec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: pay}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry, namespace: pay, annotations: {istio.io/dry-run: "true"}}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: legacy}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all-api, namespace: pay}
spec:
  selector: {matchLabels: {app: api}}
  rules: [{}]
`

// peerAuthSets are PeerAuthentication configurations, one per case.
var peerAuthSets = map[string]string{
	"no-peer-authentication": "",
	"mesh-strict-workload-exceptions": `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-ports, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {"8080": {mode: PERMISSIVE}, "9090": {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-permissive, namespace: pay, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {"9090": {mode: STRICT}}
`,
	"namespace-levels": `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: api-strict-ports, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: api}}
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pay-unset-strict-port, namespace: pay, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {"8080": {mode: STRICT}}
`,
}

// knownAmbientDifferences are the documented differences from istiod
// (docs/ambient.md, "Differences from istiod"), by resource and field;
// any other difference fails, and so does a known one that no longer
// shows.
var knownAmbientDifferences = map[string]string{}

func init() {
	// Istio's selector filter is skipped for an object without labels,
	// so a ServiceEntry without labels gets every selector-scoped policy
	// of its namespace and the root namespace; warden attaches only those
	// that select it (an ALLOW policy selecting other workloads would
	// widen who may reach the entry's endpoints).
	for _, w := range []string{"pay/dns-only/a.example.org", "pay/dns-only/b.example.org", "pay/payments-api/203.0.113.7", "pay/payments-api/203.0.113.8"} {
		knownAmbientDifferences["Address Kubernetes/networking.istio.io/ServiceEntry/"+w+": workload.authorization_policies"] = "unlabelled objects get no selector policy"
	}
	knownAmbientDifferences["Address Kubernetes//Pod/shop/unlabelled: workload.authorization_policies"] = "unlabelled objects get no selector policy"
}

type ambientAnswer struct {
	ID             string                     `json:"id"`
	Addresses      map[string]json.RawMessage `json:"addresses"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	Wire           map[string][]byte          `json:"wire"`
	Error          string                     `json:"error"`
}

// TestAmbientAgreesWithIstio feeds Istio's ambient index (hack/istioauthz
// -ambient: istiod's own code at the pinned istio.io/istio) and warden's
// (registry.AmbientInput and ambient.Compile) the same generated objects,
// and compares every Address and Authorization resource field by field.
func TestAmbientAgreesWithIstio(t *testing.T) {
	m := generateMesh()
	kube := m.yaml(t)
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range peerAuthSets {
			if !yield(n) {
				return
			}
		}
	})
	type oracleCase struct {
		ID   string `json:"id"`
		YAML string `json:"yaml"`
	}
	var cases []oracleCase
	for _, n := range names {
		cases = append(cases, oracleCase{ID: n, YAML: strings.Join([]string{kube, ambientEntries, ambientAuthz, peerAuthSets[n]}, "\n---\n")})
	}
	answers := testkit.AskIstio(t, []string{"-ambient"}, cases)
	var slimmed []*corev1.Pod
	for _, p := range m.pods {
		s, err := registry.SlimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		slimmed = append(slimmed, s.(*corev1.Pod))
	}
	pods, svcs, nss := registry.AmbientInput(slimmed, m.services, m.slices, m.namespaces)
	compared := 0
	seen := map[string]bool{}
	for i, n := range names {
		t.Run(n, func(t *testing.T) {
			var a ambientAnswer
			if err := json.Unmarshal(answers[i], &a); err != nil {
				t.Fatal(err)
			}
			if a.Error != "" {
				t.Fatalf("Istio: %s", a.Error)
			}
			objs, err := api.Decode([]byte(strings.Join([]string{ambientEntries, ambientAuthz, peerAuthSets[n]}, "\n---\n")))
			if err != nil {
				t.Fatal(err)
			}
			res := ambient.Compile(ambient.Input{Pods: pods, Services: svcs, Namespaces: nss, Config: objs})
			var diffs []string
			diffs = append(diffs, compareResources(t, "Address", a.Addresses, a.Wire, "", res.Addresses, func() proto.Message { return &workloadapi.Address{} })...)
			diffs = append(diffs, compareResources(t, "Authorization", a.Authorizations, a.Wire, "authorization ", res.Authorizations, func() proto.Message { return &security.Authorization{} })...)
			compared += len(a.Addresses) + len(a.Authorizations)
			var unexpected []string
			for _, d := range diffs {
				if _, ok := knownAmbientDifferences[diffKey(d)]; !ok {
					unexpected = append(unexpected, d)
				}
				seen[diffKey(d)] = true
			}
			if len(unexpected) > 0 {
				t.Errorf("%d differences from Istio's ambient index:\n%s", len(unexpected), strings.Join(unexpected, "\n"))
			}
		})
	}
	t.Logf("compared %d resources of Istio's in %d cases", compared, len(names))
	if compared < 100 {
		t.Errorf("only %d resources compared", compared)
	}
	for k, why := range knownAmbientDifferences {
		if !seen[k] {
			t.Errorf("the known difference %q (%s) no longer shows: take it out of knownAmbientDifferences and docs/ambient.md", k, why)
		}
	}
}

// diffKey is a difference's resource and field ("Address <name>: <field>").
func diffKey(d string) string {
	if i := strings.Index(d, ": Istio "); i >= 0 {
		return d[:i]
	}
	return d
}

// compareResources lists, by resource name and field, how warden's
// resources differ from Istio's. Each of Istio's resources must decode
// from its binary encoding (wire, under prefix+name) into warden's copy
// of the message exactly as from its JSON: the field numbers and types
// are Istio's.
func compareResources(t *testing.T, kind string, istio map[string]json.RawMessage, wire map[string][]byte, prefix string, warden []ambient.Resource, newMsg func() proto.Message) []string {
	t.Helper()
	w := map[string]proto.Message{}
	for _, r := range warden {
		w[r.Name] = r.Message
	}
	var diffs []string
	for name, raw := range istio {
		msg := newMsg()
		if err := protojson.Unmarshal(raw, msg); err != nil {
			t.Fatalf("%s %s: Istio's resource does not decode as warden's message: %v", kind, name, err)
		}
		fromWire := newMsg()
		b, ok := wire[prefix+name]
		if !ok {
			t.Fatalf("%s %s: the oracle sent no encoding", kind, name)
		}
		if err := proto.Unmarshal(b, fromWire); err != nil || !proto.Equal(fromWire, msg) || len(fromWire.ProtoReflect().GetUnknown()) > 0 {
			t.Errorf("%s %s: Istio's encoding decodes into warden's message as %v (error %v), its JSON as %v", kind, name, fromWire, err, msg)
		}
		got, ok := w[name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s %s: only in Istio", kind, name))
			continue
		}
		for _, f := range fieldDiffs(msg.ProtoReflect(), got.ProtoReflect()) {
			diffs = append(diffs, fmt.Sprintf("%s %s: %s", kind, name, f))
		}
	}
	for name := range w {
		if _, ok := istio[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s %s: only in warden", kind, name))
		}
	}
	sort.Strings(diffs)
	return diffs
}

// fieldDiffs names the fields that differ, descending into the oneof of
// an Address.
func fieldDiffs(a, b protoreflect.Message) []string {
	var out []string
	fields := a.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		va, vb := a.Has(f), b.Has(f)
		if f.Message() != nil && f.ContainingOneof() != nil && va && vb {
			for _, d := range fieldDiffs(a.Get(f).Message(), b.Get(f).Message()) {
				out = append(out, string(f.Name())+"."+d)
			}
			continue
		}
		ca, cb := a.Interface(), b.Interface()
		ma, mb := proto.Clone(ca).ProtoReflect(), proto.Clone(cb).ProtoReflect()
		keep(ma, f)
		keep(mb, f)
		if !proto.Equal(ma.Interface(), mb.Interface()) {
			ja, _ := protojson.Marshal(ma.Interface())
			jb, _ := protojson.Marshal(mb.Interface())
			out = append(out, fmt.Sprintf("%s: Istio %s, warden %s", f.Name(), ja, jb))
		}
	}
	return out
}

// keep clears every field of m but f.
func keep(m protoreflect.Message, f protoreflect.FieldDescriptor) {
	m.Range(func(g protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if g != f {
			m.Clear(g)
		}
		return true
	})
}
