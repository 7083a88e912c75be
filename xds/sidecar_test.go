package xds_test

import (
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/wardenmesh/warden/xds"
)

// TestSidecarScope: each proxy receives what its Sidecar's egress hosts
// name (selector first, then its namespace's, then the root namespace's
// default), restricted to exported services, plus the destinations of
// the VirtualServices in scope; exportTo hides VirtualServices and
// DestinationRules from other namespaces; fields warden does not apply
// are reported by name.
func TestSidecarScope(t *testing.T) {
	mesh := loadMesh(t, "testdata/scope")
	for _, tc := range []struct {
		name, node, generator string
		sidecar               string // the Sidecar that applies
		clusters              []string
		listeners             []string
		report                string // a report that must be there
	}{
		{name: "sleep by selector", node: "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local", sidecar: "default/sleep",
			clusters: []string{
				"outbound|80||flaskapp.default.svc.cluster.local", "outbound|80||sleep.default.svc.cluster.local",
				"outbound|8000||httpbin.other.svc.cluster.local", "outbound|9000||httpbin.other.svc.cluster.local",
				"outbound|9080||reviews.other.svc.cluster.local"},
			listeners: []string{"0.0.0.0_80", "0.0.0.0_8000", "0.0.0.0_9000", "0.0.0.0_9080"},
			report:    "Sidecar default/sleep: outboundTrafficPolicy.mode ALLOW_ANY is not supported"},
		{name: "flaskapp by the root default, reviews as a VirtualService destination", node: "sidecar~10.0.0.2~flaskapp.default~default.svc.cluster.local",
			sidecar: "istio-system/default",
			clusters: []string{"outbound|80||flaskapp.default.svc.cluster.local", "outbound|80||sleep.default.svc.cluster.local",
				"outbound|9080||reviews.other.svc.cluster.local"},
			listeners: []string{"0.0.0.0_80", "0.0.0.0_9080"}},
		{name: "web: one port of httpbin, ledger exported to it", node: "sidecar~10.0.2.2~web.frontend~frontend.svc.cluster.local", sidecar: "frontend/default",
			clusters: []string{"outbound|8000||httpbin.other.svc.cluster.local", "outbound|80||web.frontend.svc.cluster.local",
				"outbound|80||ledger.payments.svc.cluster.local"},
			listeners: []string{"0.0.0.0_80", "0.0.0.0_8000"}},
		{name: "httpbin sees its namespace's VirtualService and subsets", node: "sidecar~10.0.1.2~httpbin.other~other.svc.cluster.local", sidecar: "istio-system/default",
			clusters: []string{"outbound|8000||httpbin.other.svc.cluster.local", "outbound|8000|v1|httpbin.other.svc.cluster.local",
				"outbound|9000||httpbin.other.svc.cluster.local", "outbound|9000|v1|httpbin.other.svc.cluster.local",
				"outbound|9080||reviews.other.svc.cluster.local"},
			listeners: []string{"0.0.0.0_8000", "0.0.0.0_9000", "0.0.0.0_9080"}},
		{name: "proxyless web: flaskapp is not resolvable", node: "sidecar~10.0.2.2~web.frontend~frontend.svc.cluster.local", generator: xds.GeneratorGRPC,
			sidecar: "frontend/default",
			clusters: []string{"outbound|8000||httpbin.other.svc.cluster.local", "outbound|80||web.frontend.svc.cluster.local",
				"outbound|80||ledger.payments.svc.cluster.local"},
			listeners: []string{"httpbin.other.svc.cluster.local:8000", "web.frontend.svc.cluster.local:80", "web.frontend.svc.cluster.local",
				"ledger.payments.svc.cluster.local:80", "ledger.payments.svc.cluster.local"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := xds.ParseNodeID(tc.node)
			if err != nil {
				t.Fatal(err)
			}
			if tc.generator != "" {
				p.Generator = tc.generator
			}
			sc := mesh.ScopeOf(p, mesh.Workload(p))
			if sc.Sidecar == nil || sc.Sidecar.Metadata.Namespace+"/"+sc.Sidecar.Metadata.Name != tc.sidecar {
				t.Fatalf("Sidecar: got %+v, want %s", sc.Sidecar, tc.sidecar)
			}
			cfg, err := mesh.Outbound(sc)
			if err != nil {
				t.Fatal(err)
			}
			var clusters, listeners []string
			// Every Envoy sidecar has virtualOutbound and its
			// BlackHoleCluster, whatever its scope (the goldens show them).
			for _, r := range cfg.Clusters {
				if n := r.(*clusterv3.Cluster).Name; n != xds.BlackHoleCluster {
					clusters = append(clusters, n)
				}
			}
			for _, r := range cfg.Listeners {
				if n := r.(*listenerv3.Listener).Name; n != xds.OutboundListener {
					listeners = append(listeners, n)
				}
			}
			slices.Sort(clusters)
			slices.Sort(tc.clusters)
			slices.Sort(listeners)
			slices.Sort(tc.listeners)
			if !slices.Equal(clusters, tc.clusters) {
				t.Errorf("clusters:\n got %q\nwant %q", clusters, tc.clusters)
			}
			if !slices.Equal(listeners, tc.listeners) {
				t.Errorf("listeners:\n got %q\nwant %q", listeners, tc.listeners)
			}
			if tc.report != "" && !slices.ContainsFunc(cfg.Reports, func(r string) bool { return strings.Contains(r, tc.report) }) {
				t.Errorf("reports %q lack %q", cfg.Reports, tc.report)
			}
		})
	}
}

// TestExportToVirtualService: a VirtualService exported only to its own
// namespace routes there and nowhere else.
func TestExportToVirtualService(t *testing.T) {
	mesh := loadMesh(t, "testdata/scope")
	timeout := func(node string) string {
		t.Helper()
		p, err := xds.ParseNodeID(node)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _, err := mesh.ProxyConfig(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cfg.Routes {
			for _, vh := range r.(*routev3.RouteConfiguration).VirtualHosts {
				if vh.Name == "httpbin.other.svc.cluster.local:8000" {
					return vh.Routes[0].GetRoute().GetTimeout().AsDuration().String()
				}
			}
		}
		t.Fatalf("%s: no virtual host for httpbin", node)
		return ""
	}
	if got := timeout("sidecar~10.0.1.2~httpbin.other~other.svc.cluster.local"); got != "3s" {
		t.Errorf("in other: timeout %s, want the VirtualService's 3s", got)
	}
	if got := timeout("sidecar~10.0.0.4~sleep.default~default.svc.cluster.local"); got != "0s" {
		t.Errorf("in default: timeout %s, want none (the VirtualService is exported to other only)", got)
	}
}
