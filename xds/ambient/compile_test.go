package ambient_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

func decode(t *testing.T, y string) []api.Object {
	t.Helper()
	objs, err := api.Decode([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func pod(name, ns, ip, node string, labels map[string]string) *ambient.Pod {
	return &ambient.Pod{Name: name, Namespace: ns, IPs: []string{ip}, NodeName: node, Phase: "Running", Ready: true,
		ServiceAccount: "sa-" + name, Labels: labels, Annotations: map[string]string{ambient.RedirectionAnnotation: "enabled"}}
}

func find(t *testing.T, rs []ambient.Resource, name string) proto.Message {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r.Message
		}
	}
	var names []string
	for _, r := range rs {
		names = append(names, r.Name)
	}
	t.Fatalf("no resource %s; have %v", name, names)
	return nil
}

func workload(t *testing.T, res *ambient.Result, name string) *workloadapi.Workload {
	t.Helper()
	return find(t, res.Addresses, name).(*workloadapi.Address).GetWorkload()
}

func TestPodWorkload(t *testing.T) {
	t.Parallel()
	p := pod("web-7d9f-abcde", "shop", "10.0.0.7", "node-a", map[string]string{"app": "web", "pod-template-hash": "7d9f", "version": "v2"})
	p.GenerateName = "web-7d9f-"
	p.Controller = &ambient.Owner{Kind: "ReplicaSet", Name: "web-7d9f"}
	p.ContainerPorts = map[string]uint32{"http": 8080}
	svc := &ambient.Service{Name: "web", Namespace: "shop", Selector: map[string]string{"app": "web"}, ClusterIPs: []string{"10.96.0.10"},
		Ports: []ambient.ServicePort{{Name: "http", Port: 80, TargetPortName: "http"}, {Name: "grpc-x", Port: 90, TargetPortName: "missing"}}}
	res := ambient.Compile(ambient.Input{ClusterID: "c1", Pods: []*ambient.Pod{p}, Services: []*ambient.Service{svc}})
	w := workload(t, res, "c1//Pod/shop/web-7d9f-abcde")
	want := &workloadapi.Workload{
		Uid: "c1//Pod/shop/web-7d9f-abcde", Name: "web-7d9f-abcde", Namespace: "shop", Addresses: [][]byte{{10, 0, 0, 7}},
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE, ServiceAccount: "sa-web-7d9f-abcde", Node: "node-a", ClusterId: "c1",
		CanonicalName: "web", CanonicalRevision: "v2", WorkloadName: "web", WorkloadType: workloadapi.WorkloadType_POD,
		Services: map[string]*workloadapi.PortList{"shop/web.shop.svc.cluster.local": {Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
	if !proto.Equal(w, want) {
		t.Errorf("workload:\n got %v\nwant %v", protojson.Format(w), protojson.Format(want))
	}
	s := find(t, res.Addresses, "shop/web.shop.svc.cluster.local").(*workloadapi.Address).GetService()
	if !s.Canonical || len(s.Addresses) != 1 || s.Ports[1].AppProtocol != workloadapi.AppProtocol_GRPC {
		t.Errorf("service: %v", protojson.Format(s))
	}
	if got := res.ByIP["/10.0.0.7"]; len(got) != 1 || got[0] != w.Uid {
		t.Errorf("ByIP[/10.0.0.7] = %v", got)
	}
}

// A pod's readiness and deletion make it UNHEALTHY; a pod that ended or
// has no IP is no workload.
func TestPodStatus(t *testing.T) {
	t.Parallel()
	notReady := pod("a", "ns", "10.0.0.1", "n", nil)
	notReady.Ready = false
	deleting := pod("b", "ns", "10.0.0.2", "n", nil)
	deleting.Deleting = true
	done := pod("c", "ns", "10.0.0.3", "n", nil)
	done.Phase = "Succeeded"
	noIP := pod("d", "ns", "", "n", nil)
	noIP.IPs = nil
	plain := pod("e", "ns", "10.0.0.5", "n", nil)
	plain.Annotations = nil
	res := ambient.Compile(ambient.Input{Pods: []*ambient.Pod{notReady, deleting, done, noIP, plain}})
	if len(res.Addresses) != 3 {
		t.Fatalf("%d addresses, want 3 (a, b, e)", len(res.Addresses))
	}
	for _, n := range []string{"a", "b"} {
		if s := workload(t, res, "Kubernetes//Pod/ns/"+n).Status; s != workloadapi.WorkloadStatus_UNHEALTHY {
			t.Errorf("%s: status %v, want UNHEALTHY", n, s)
		}
	}
	if w := workload(t, res, "Kubernetes//Pod/ns/e"); w.TunnelProtocol != workloadapi.TunnelProtocol_NONE || w.Status != workloadapi.WorkloadStatus_HEALTHY {
		t.Errorf("a pod istio-cni did not redirect: %v", protojson.Format(w))
	}
}

// An ALLOW rule with HTTP attributes matches nothing (left out); a DENY
// rule loses them and denies more; both are reported by name.
func TestL7RulesNeverWiden(t *testing.T) {
	t.Parallel()
	objs := decode(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to: [{operation: {methods: [GET], ports: ["8080"]}}]
  - from: [{source: {namespaces: [front]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/x/sa/y]}}]
    to: [{operation: {paths: [/admin]}}]
`)
	res := ambient.Compile(ambient.Input{Config: objs, Pods: []*ambient.Pod{pod("web", "shop", "10.0.0.1", "n", map[string]string{"app": "web"})}})
	allow := find(t, res.Authorizations, "shop/allow-get").(*security.Authorization)
	if len(allow.Groups) != 1 || allow.Scope != security.Scope_WORKLOAD_SELECTOR {
		t.Fatalf("allow-get: want only the L4 rule kept: %v", protojson.Format(allow))
	}
	if ns := allow.Groups[0].Rules[0].Matches[0].Namespaces; len(ns) != 1 || ns[0].GetExact() != "front" {
		t.Errorf("allow-get kept the wrong rule: %v", protojson.Format(allow))
	}
	deny := find(t, res.Authorizations, "shop/deny-admin").(*security.Authorization)
	if deny.Scope != security.Scope_NAMESPACE || deny.Action != security.Action_DENY || len(deny.Groups) != 1 {
		t.Fatalf("deny-admin: %v", protojson.Format(deny))
	}
	// The to part is an empty match (any port): the principal alone denies.
	g := deny.Groups[0]
	if len(g.Rules) != 2 || !proto.Equal(g.Rules[0].Matches[0], &security.Match{}) || g.Rules[1].Matches[0].Principals[0].GetExact() != "cluster.local/ns/x/sa/y" {
		t.Errorf("deny-admin: %v", protojson.Format(deny))
	}
	if w := workload(t, res, "Kubernetes//Pod/shop/web"); len(w.AuthorizationPolicies) != 1 || w.AuthorizationPolicies[0] != "shop/allow-get" {
		t.Errorf("policies = %v, want [shop/allow-get]", w.AuthorizationPolicies)
	}
	reports := strings.Join(res.Reports, "\n")
	for _, want := range []string{
		"AuthorizationPolicy shop/allow-get: ztunnel does not evaluate HTTP attributes (found: methods); in an ALLOW policy the rules that use them are left out",
		"AuthorizationPolicy shop/deny-admin: ztunnel does not evaluate HTTP attributes (found: paths); in a DENY policy they are left out of their rules, which then deny more",
	} {
		if !strings.Contains(reports, want) {
			t.Errorf("reports lack %q:\n%s", want, reports)
		}
	}
}

func TestScopesAndActions(t *testing.T) {
	t.Parallel()
	objs := decode(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [1.2.3.0/24, "::1"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: shop}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint, namespace: shop}
spec: {targetRefs: [{kind: Service, group: "", name: web}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-port, namespace: shop}
spec: {rules: [{to: [{operation: {ports: ["http"]}}]}]}
`)
	res := ambient.Compile(ambient.Input{Config: objs})
	if len(res.Authorizations) != 2 {
		t.Fatalf("authorizations %v: want mesh and bad-port (AUDIT and targetRefs are not ztunnel's)", res.Authorizations)
	}
	mesh := find(t, res.Authorizations, "istio-system/mesh").(*security.Authorization)
	ips := mesh.Groups[0].Rules[0].Matches[0].SourceIps
	if mesh.Scope != security.Scope_GLOBAL || len(ips) != 2 || ips[0].Length != 24 || ips[1].Length != 128 || len(ips[1].Address) != 16 {
		t.Errorf("mesh: %v", protojson.Format(mesh))
	}
	if bad := find(t, res.Authorizations, "shop/bad-port").(*security.Authorization); len(bad.Groups) != 0 {
		t.Errorf("an ALLOW rule with a port that does not parse must match nothing: %v", protojson.Format(bad))
	}
}

// PeerAuthentication: the static STRICT policy is named by workloads
// whose mode is STRICT; a workload policy with port exceptions becomes
// its own DENY policy that merges the namespace's STRICT.
func TestPeerAuthentication(t *testing.T) {
	t.Parallel()
	objs := decode(t, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  portLevelMtls: {"9000": {mode: PERMISSIVE}}
`)
	res := ambient.Compile(ambient.Input{Config: objs, Pods: []*ambient.Pod{
		pod("web", "shop", "10.0.0.1", "n", map[string]string{"app": "web"}),
		pod("legacy", "shop", "10.0.0.2", "n", map[string]string{"app": "legacy"}),
		pod("other", "else", "10.0.0.3", "n", nil),
	}})
	strict := find(t, res.Authorizations, "istio-system/istio_converted_static_strict").(*security.Authorization)
	if strict.Action != security.Action_DENY || strict.Groups[0].Rules[0].Matches[0].NotPrincipals[0].GetPresence() == nil {
		t.Errorf("static strict: %v", protojson.Format(strict))
	}
	legacy := find(t, res.Authorizations, "shop/converted_peer_authentication_legacy").(*security.Authorization)
	want := &security.Authorization{Name: "converted_peer_authentication_legacy", Namespace: "shop", Scope: security.Scope_WORKLOAD_SELECTOR, Action: security.Action_DENY,
		Groups: []*security.Group{{Rules: []*security.Rules{
			{Matches: []*security.Match{{NotDestinationPorts: []uint32{9000}}}},
			{Matches: []*security.Match{{NotPrincipals: strict.Groups[0].Rules[0].Matches[0].NotPrincipals}}},
		}}}}
	if !proto.Equal(legacy, want) {
		t.Errorf("legacy:\n got %v\nwant %v", protojson.Format(legacy), protojson.Format(want))
	}
	for name, want := range map[string]string{"shop/web": "istio-system/istio_converted_static_strict", "shop/legacy": "shop/converted_peer_authentication_legacy", "else/other": ""} {
		got := strings.Join(workload(t, res, "Kubernetes//Pod/"+name).AuthorizationPolicies, ",")
		if got != want {
			t.Errorf("%s names %q, want %q", name, got, want)
		}
	}
}

// A namespace's or service's istio.io/use-waypoint names the waypoint of
// its services; a pod's own label its workload's.
func TestWaypoints(t *testing.T) {
	t.Parallel()
	ns := &ambient.Namespace{Name: "shop", Labels: map[string]string{ambient.UseWaypointLabel: "wp"}}
	p := pod("web", "shop", "10.0.0.1", "n", map[string]string{"app": "web", ambient.UseWaypointLabel: "pod-wp", ambient.UseWaypointNamespaceLabel: "infra"})
	res := ambient.Compile(ambient.Input{Namespaces: []*ambient.Namespace{ns}, Pods: []*ambient.Pod{p}, Services: []*ambient.Service{
		{Name: "web", Namespace: "shop", Selector: map[string]string{"app": "web"}, Ports: []ambient.ServicePort{{Port: 80}}},
		{Name: "direct", Namespace: "shop", Labels: map[string]string{ambient.UseWaypointLabel: "none"}, Ports: []ambient.ServicePort{{Port: 80}}},
	}})
	wp := find(t, res.Addresses, "shop/web.shop.svc.cluster.local").(*workloadapi.Address).GetService().Waypoint
	if wp.GetHostname().GetHostname() != "wp.shop.svc.cluster.local" || wp.HboneMtlsPort != 15008 {
		t.Errorf("service waypoint %v", wp)
	}
	if wp := find(t, res.Addresses, "shop/direct.shop.svc.cluster.local").(*workloadapi.Address).GetService().Waypoint; wp != nil {
		t.Errorf("use-waypoint none: waypoint %v", wp)
	}
	if wp := workload(t, res, "Kubernetes//Pod/shop/web").Waypoint; wp.GetHostname().GetNamespace() != "infra" || wp.GetHostname().GetHostname() != "pod-wp.infra.svc.cluster.local" {
		t.Errorf("workload waypoint %v", wp)
	}
}

// The checked-in Go code is what hack/workloadapi.sh generates from the
// .proto files.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	t.Parallel()
	out := t.TempDir()
	cmd := exec.Command("../../hack/workloadapi.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/workloadapi.sh: %v\n%s", err, b)
	}
	for _, f := range []string{"workloadapi/workload.pb.go", "workloadapi/security/authorization.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%s is not what hack/workloadapi.sh generates; run it", f)
		}
	}
}

// The type URLs are the ones ztunnel subscribes to.
func TestTypeURLs(t *testing.T) {
	t.Parallel()
	for msg, want := range map[proto.Message]string{&workloadapi.Address{}: ambient.AddressType, &security.Authorization{}: ambient.AuthorizationType} {
		if got := "type.googleapis.com/" + string(msg.ProtoReflect().Descriptor().FullName()); got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
	// Istio's metric type labels.
	if a, b := xds.ShortType(ambient.AddressType), xds.ShortType(ambient.AuthorizationType); a != "wds" || b != "wads" {
		t.Errorf("metric types %q, %q; want wds, wads", a, b)
	}
}

// A ServiceEntry host no Kubernetes Service defines is canonical; of two
// entries for one host in two namespaces, the older is (Istio's
// selectWorkloadServices).
func TestServiceEntryCanonical(t *testing.T) {
	t.Parallel()
	objs := decode(t, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: b, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: a, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {hosts: [api.example.com], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec: {hosts: [web.shop.svc.cluster.local], ports: [{number: 80, name: http}], resolution: STATIC}
`)
	res := ambient.Compile(ambient.Input{Config: objs, Services: []*ambient.Service{{Name: "web", Namespace: "other", Ports: []ambient.ServicePort{{Port: 80}}}}})
	for name, want := range map[string]bool{"b/api.example.com": true, "a/api.example.com": false, "shop/web.shop.svc.cluster.local": true, "other/web.other.svc.cluster.local": true} {
		if got := find(t, res.Addresses, name).(*workloadapi.Address).GetService().Canonical; got != want {
			t.Errorf("%s: canonical %v, want %v", name, got, want)
		}
	}
}
