package xds_test

import (
	"maps"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/xds"
)

// TestTCPServicesByAddress: on port 80, flaskapp (HTTP) keeps its routes
// while sleep's TCP port ("ssh") and aaa-db's (whose name sorts first,
// which used to turn the whole port into a TCP proxy to it) are matched by
// their addresses; a TCP service without an address is reported by name;
// an external CIDR and a port with a single TCP service work too.
func TestTCPServicesByAddress(t *testing.T) {
	mesh := loadMesh(t, "testdata/tcp")
	p, err := xds.ParseNodeID("sidecar~10.0.0.4~sleep.default~default.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := mesh.ProxyConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	listeners := map[string]*listenerv3.Listener{}
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		listeners[l.Name] = l
	}
	// chains maps a chain's match ("*" for none) to what it does.
	chains := func(name string) map[string]string {
		t.Helper()
		l := listeners[name]
		if l == nil {
			t.Fatalf("no listener %s", name)
		}
		out := map[string]string{}
		for _, fc := range l.FilterChains {
			match := "*"
			if m := fc.GetFilterChainMatch(); m != nil {
				var rs []string
				for _, r := range m.PrefixRanges {
					rs = append(rs, r.AddressPrefix+"/"+itoa(r.PrefixLen.GetValue()))
				}
				match = strings.Join(rs, ",")
			}
			f := fc.Filters[0]
			what := f.Name
			if f.Name == "envoy.filters.network.tcp_proxy" {
				var tp tcpv3.TcpProxy
				if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
					t.Fatal(err)
				}
				what = "tcp:" + tp.GetCluster()
			}
			out[match] = what
		}
		return out
	}
	want80 := map[string]string{
		"10.96.0.5/32":  "tcp:outbound|80||aaa-db.default.svc.cluster.local",
		"10.96.0.20/32": "tcp:outbound|80||sleep.default.svc.cluster.local",
		"*":             "envoy.filters.network.http_connection_manager",
	}
	if got := chains("0.0.0.0_80"); !equalMaps(got, want80) {
		t.Errorf("port 80: %v\nwant %v", got, want80)
	}
	if got := chains("0.0.0.0_5432"); got["192.0.2.0/24"] != "tcp:outbound|5432||pg.example.com" || len(got) != 1 {
		t.Errorf("port 5432: %v", got)
	}
	if got := chains("0.0.0.0_6379"); got["*"] != "tcp:outbound|6379||cache.default.svc.cluster.local" || len(got) != 1 {
		t.Errorf("port 6379: %v", got)
	}
	var rc80 *routev3.RouteConfiguration
	for _, r := range cfg.Routes {
		if rc := r.(*routev3.RouteConfiguration); rc.Name == "80" {
			rc80 = rc
		}
	}
	if rc80 == nil || !strings.Contains(rc80.String(), "flaskapp.default.svc.cluster.local") || strings.Contains(rc80.String(), "sleep.default") {
		t.Errorf("the port 80 routes lost flaskapp or gained a TCP service: %v", rc80)
	}
	if len(cfg.Reports) != 1 || !strings.Contains(cfg.Reports[0], "legacy.default.svc.cluster.local has no address") {
		t.Errorf("reports: %q", cfg.Reports)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func equalMaps(a, b map[string]string) bool { return maps.Equal(a, b) }

// TestIstioServerListenerName: a proxyless gRPC server behind Istio's
// agent asks for its listener as istiod names it; it gets the same
// listener as under warden's name, named as it asked.
func TestIstioServerListenerName(t *testing.T) {
	mesh := loadMesh(t, "testdata/mesh")
	p, err := xds.ParseNodeID("sidecar~127.0.0.3~flaskapp-v2.default~default.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p.Generator = xds.GeneratorGRPC
	server := func(name string) *listenerv3.Listener {
		t.Helper()
		cfg, _, err := mesh.ProxyConfig(p, []string{name})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cfg.Listeners {
			if l := r.(*listenerv3.Listener); l.Name == name {
				return l
			}
		}
		t.Fatalf("no listener %q", name)
		return nil
	}
	istio := server(xds.IstioServerListenerName + "127.0.0.3:8080")
	warden := server(xds.ServerListenerName + "127.0.0.3:8080")
	if len(istio.FilterChains) != 1 || istio.FilterChains[0].TransportSocket == nil {
		t.Fatalf("Istio-named listener without its mTLS filter chain: %v", istio)
	}
	istio.Name = warden.Name
	if !proto.Equal(istio, warden) {
		t.Fatal("the listener differs by the name it was asked by")
	}
	if _, _, ok := xds.ParseServerListenerName(xds.IstioServerListenerName + "[::]:8080"); !ok {
		t.Error("Istio's IPv6 unspecified form is not read")
	}
}

// TestHeadlessTCPService: a headless Service's TCP port is matched by its
// pods' addresses and forwarded to where the client was going (an
// ORIGINAL_DST cluster, as Istio's), beside an HTTP service on the same
// port; proxyless gRPC, which has no original destination, balances over
// the endpoints. Every resource passes ValidateAll.
func TestHeadlessTCPService(t *testing.T) {
	services := []*xds.Service{
		{Host: "cassandra.db.svc.cluster.local", Name: "cassandra", Namespace: "db", Headless: true,
			Ports:     []xds.ServicePort{{Number: 9042, Name: "tcp-cql"}},
			Endpoints: []xds.Endpoint{{Address: "10.1.0.7", ServiceAccount: "cassandra"}, {Address: "10.1.0.8", ServiceAccount: "cassandra"}}},
		{Host: "web.default.svc.cluster.local", Name: "web", Namespace: "default", Addresses: []string{"10.96.0.9"},
			Ports:     []xds.ServicePort{{Number: 9042, Name: "http"}},
			Endpoints: []xds.Endpoint{{Address: "10.1.0.9", ServiceAccount: "web"}}},
	}
	mesh, err := xds.NewMesh(nil, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const cluster = "outbound|9042||cassandra.db.svc.cluster.local"
	for _, gen := range []string{xds.GeneratorEnvoy, xds.GeneratorGRPC} {
		cfg, err := mesh.Outbound(xds.Scope{Namespace: "default", Generator: gen})
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: %v", gen, err)
		}
		var c *clusterv3.Cluster
		for _, r := range cfg.Clusters {
			if r.(*clusterv3.Cluster).Name == cluster {
				c = r.(*clusterv3.Cluster)
			}
		}
		hasCLA := false
		for _, r := range cfg.Endpoints {
			hasCLA = hasCLA || xds.ResourceName(r) == cluster
		}
		switch {
		case c == nil:
			t.Fatalf("%s: no cluster %s", gen, cluster)
		case gen == xds.GeneratorEnvoy && (c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.LbPolicy != clusterv3.Cluster_CLUSTER_PROVIDED || hasCLA):
			t.Errorf("envoy: cluster %v (type %v, lb %v), endpoints sent: %v; want ORIGINAL_DST, CLUSTER_PROVIDED, none", cluster, c.GetType(), c.LbPolicy, hasCLA)
		case gen == xds.GeneratorGRPC && (c.GetType() != clusterv3.Cluster_EDS || !hasCLA):
			t.Errorf("grpc: cluster type %v, endpoints sent %v; want EDS with endpoints", c.GetType(), hasCLA)
		}
		if gen != xds.GeneratorEnvoy {
			continue
		}
		var l *listenerv3.Listener
		for _, r := range cfg.Listeners {
			if r.(*listenerv3.Listener).Name == "0.0.0.0_9042" {
				l = r.(*listenerv3.Listener)
			}
		}
		if l == nil || len(l.FilterChains) != 2 {
			t.Fatalf("listener 0.0.0.0_9042: %v", l)
		}
		fc := l.FilterChains[0]
		var ranges []string
		for _, r := range fc.GetFilterChainMatch().GetPrefixRanges() {
			ranges = append(ranges, r.AddressPrefix+"/"+itoa(r.PrefixLen.GetValue()))
		}
		var tp tcpv3.TcpProxy
		if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&tp); err != nil || tp.GetCluster() != cluster ||
			strings.Join(ranges, ",") != "10.1.0.7/32,10.1.0.8/32" {
			t.Errorf("headless chain: ranges %v -> %s (%v)", ranges, tp.GetCluster(), err)
		}
		if len(cfg.Reports) > 0 {
			t.Errorf("reports: %q", cfg.Reports)
		}
	}
}
