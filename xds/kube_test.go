package xds_test

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/xds"
)

var manifestSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadKubeMesh builds a mesh from a manifest that mixes Kubernetes
// Services, EndpointSlices and Pods with Istio objects. The Kubernetes
// objects become registry entries through the Kubernetes registry's own
// mapping (kube.ServiceFromKubernetes, kube.EndpointsFromSlice), so the
// ClusterIPs, headless flag and appProtocol reach xds as in a cluster.
// Objects without a namespace are in default.
func loadKubeMesh(t *testing.T, file string) *xds.Mesh {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var (
		istio  []string
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		pods   = map[string]*corev1.Pod{} // namespace/name
	)
	strict := func(doc string, into any) {
		t.Helper()
		if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	for _, doc := range manifestSeparator.Split(string(b), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Service":
			s := &corev1.Service{}
			strict(doc, s)
			svcs = append(svcs, s)
		case "discovery.k8s.io/v1 EndpointSlice":
			sl := &discoveryv1.EndpointSlice{}
			strict(doc, sl)
			slices = append(slices, sl)
		case "v1 Pod":
			p := &corev1.Pod{}
			strict(doc, p)
			pods[nsOr(p.Namespace)+"/"+p.Name] = p
		default:
			istio = append(istio, doc)
		}
	}
	objs, err := api.Decode([]byte(strings.Join(istio, "\n---\n")))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, o := range objs {
		if o.Meta().Namespace == "" {
			o.Meta().Namespace = "default"
		}
	}
	// As registry.Watcher.Services assembles them: a Service's slices by
	// the service-name label, in name order; endpoints' Pods by targetRef.
	sort.Slice(slices, func(i, j int) bool { return slices[i].Name < slices[j].Name })
	var services []*xds.Service
	for _, svc := range svcs {
		svc.Namespace = nsOr(svc.Namespace)
		s := registry.ServiceFromKubernetes(svc, xds.DefaultDomain)
		if s == nil {
			continue
		}
		for _, sl := range slices {
			if nsOr(sl.Namespace) != svc.Namespace || sl.Labels[discoveryv1.LabelServiceName] != svc.Name {
				continue
			}
			s.Endpoints = append(s.Endpoints, registry.EndpointsFromSlice(sl, func(name string) *corev1.Pod { return pods[svc.Namespace+"/"+name] })...)
		}
		services = append(services, s)
	}
	sort.Slice(services, func(i, j int) bool { return services[i].Host < services[j].Host })
	mesh, err := xds.NewMesh(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return mesh
}

func nsOr(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

// TestKubernetesTCPBesideHTTP is issue #17's case with Kubernetes
// Services: a TCP port 80 ("ssh", or a prefix-less name) with a ClusterIP
// beside an HTTP port 80 with a ClusterIP and a VirtualService. The TCP
// service's traffic is matched by its ClusterIP in a filter chain of its
// own, whichever name sorts first, and the HTTP service keeps its
// VirtualService routes; a port named without a prefix is HTTP by its
// appProtocol. The golden cases envoy-kube-port80*.json pin the rest.
func TestKubernetesTCPBesideHTTP(t *testing.T) {
	for _, tc := range []struct {
		file, node    string
		tcp, tcpRange string
		http          string
	}{
		// sleep sorts after flaskapp.
		{"testdata/kube/port80.yaml", "sidecar~10.0.0.4~sleep-7d9f8c6b5-x2x4q.default~default.svc.cluster.local",
			"sleep.default.svc.cluster.local", "10.96.0.20/32", "flaskapp.default.svc.cluster.local"},
		// bastion sorts before flaskapp, whose port is "web" with appProtocol http.
		{"testdata/kube/port80-tcp-first.yaml", "sidecar~10.0.0.5~bastion-5c8d7f9b4-q7w2m.default~default.svc.cluster.local",
			"bastion.default.svc.cluster.local", "10.96.0.5/32", "flaskapp.default.svc.cluster.local"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			mesh := loadKubeMesh(t, tc.file)
			v := viewOf(t, mesh, tc.node)
			cfg := v.cfg
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if len(cfg.Reports) > 0 {
				t.Errorf("reports: %q", cfg.Reports)
			}
			l := v.listeners["0.0.0.0_80"]
			if l == nil || len(l.FilterChains) != 2 {
				t.Fatalf("0.0.0.0_80: %v", l)
			}
			tcpChain, httpChain := v.chain("0.0.0.0_80", 0), v.chain("0.0.0.0_80", 1)
			var ranges []string
			for _, r := range tcpChain.GetFilterChainMatch().GetPrefixRanges() {
				ranges = append(ranges, r.AddressPrefix+"/"+itoa(r.PrefixLen.GetValue()))
			}
			if c := tcpCluster(t, tcpChain); c != "outbound|80||"+tc.tcp || strings.Join(ranges, ",") != tc.tcpRange {
				t.Errorf("TCP chain: %v -> %s, want %s -> %s", ranges, c, tc.tcpRange, tc.tcp)
			}
			if httpChain.FilterChainMatch != nil {
				t.Errorf("the HTTP chain is not the port's catch-all: %v", httpChain.FilterChainMatch)
			}
			rc := v.routes[rdsName(t, httpChain)]
			vh := vhost(t, rc, tc.http+":80")
			if len(vh.Routes) != 2 || vh.Routes[0].GetMatch().GetPrefix() != "/api" || vh.Routes[0].GetRoute().GetTimeout().AsDuration().String() != "3s" ||
				vh.Routes[0].GetRoute().GetCluster() != "outbound|80||"+tc.http {
				t.Errorf("%s lost its VirtualService routes: %v", tc.http, vh.Routes)
			}
			for _, h := range rc.VirtualHosts {
				if strings.HasPrefix(h.Name, tc.tcp) {
					t.Errorf("the TCP service has a virtual host on port 80: %v", h.Name)
				}
			}
			// The ClusterIPs are what the mesh routes by; the clusters
			// are EDS as for any Service with a ClusterIP.
			for _, r := range cfg.Clusters {
				if c := r.(*clusterv3.Cluster); c.Name == "outbound|80||"+tc.tcp && c.GetType() != clusterv3.Cluster_EDS {
					t.Errorf("%s: type %v, want EDS", c.Name, c.GetType())
				}
			}
		})
	}
}
