package xds_test

import (
	"slices"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
)

const (
	ingressNode = "router~10.0.9.1~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
	egressNode  = "router~10.0.9.2~istio-egressgateway-1.istio-system~istio-system.svc.cluster.local"
)

type proxyView struct {
	t         *testing.T
	cfg       *xds.Config
	listeners map[string]*listenerv3.Listener
	routes    map[string]*routev3.RouteConfiguration
}

func viewOf(t *testing.T, mesh *xds.Mesh, node string) *proxyView {
	t.Helper()
	p, err := xds.ParseNodeID(node)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := mesh.ProxyConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := &proxyView{t: t, cfg: cfg, listeners: map[string]*listenerv3.Listener{}, routes: map[string]*routev3.RouteConfiguration{}}
	for _, r := range cfg.Listeners {
		v.listeners[r.(*listenerv3.Listener).Name] = r.(*listenerv3.Listener)
	}
	for _, r := range cfg.Routes {
		v.routes[r.(*routev3.RouteConfiguration).Name] = r.(*routev3.RouteConfiguration)
	}
	return v
}

func (v *proxyView) chain(listener string, i int) *listenerv3.FilterChain {
	v.t.Helper()
	l := v.listeners[listener]
	if l == nil || len(l.FilterChains) <= i {
		v.t.Fatalf("no listener %s with a filter chain %d (listeners: %v)", listener, i, slices.Sorted(mapKeys(v.listeners)))
	}
	return l.FilterChains[i]
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func tcpCluster(t *testing.T, fc *listenerv3.FilterChain) string {
	t.Helper()
	var tp tcpv3.TcpProxy
	if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&tp); err != nil {
		t.Fatalf("%s: not a tcp_proxy: %v", fc.Name, err)
	}
	return tp.GetCluster()
}

func rdsName(t *testing.T, fc *listenerv3.FilterChain) string {
	t.Helper()
	var h hcmv3.HttpConnectionManager
	if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatalf("%s: not an HTTP connection manager: %v", fc.Name, err)
	}
	return h.GetRds().GetRouteConfigName()
}

func downstreamTLS(t *testing.T, fc *listenerv3.FilterChain) *tlsv3.DownstreamTlsContext {
	t.Helper()
	var d tlsv3.DownstreamTlsContext
	if fc.TransportSocket == nil {
		t.Fatalf("%s: no TLS", fc.Name)
	}
	if err := fc.TransportSocket.GetTypedConfig().UnmarshalTo(&d); err != nil {
		t.Fatal(err)
	}
	return &d
}

func vhost(t *testing.T, rc *routev3.RouteConfiguration, name string) *routev3.VirtualHost {
	t.Helper()
	if rc == nil {
		t.Fatalf("no route table")
	}
	for _, vh := range rc.VirtualHosts {
		if vh.Name == name {
			return vh
		}
	}
	t.Fatalf("route %s has no virtual host %s", rc.Name, name)
	return nil
}

// TestIngressGateway: the router selected by bookinfo-gateway gets a
// listener per server port, as istiod builds them: HTTP servers share
// http.80 (httpsRedirect requiring TLS for its host only); HTTPS SIMPLE
// and MUTUAL terminate with credentialName over SDS (the CA certificate
// from <name>-cacert), ISTIO_MUTUAL with the mesh identity; TCP and TLS
// PASSTHROUGH servers proxy to the tcp and tls routes bound to them.
func TestIngressGateway(t *testing.T) {
	mesh := loadMesh(t, "testdata/gateway")
	v := viewOf(t, mesh, ingressNode)
	want := []string{"0.0.0.0_15443", "0.0.0.0_31400", "0.0.0.0_443", "0.0.0.0_80", "0.0.0.0_8443", "0.0.0.0_9443"}
	if got := slices.Sorted(mapKeys(v.listeners)); !slices.Equal(got, want) {
		t.Fatalf("listeners %v, want %v", got, want)
	}
	if len(v.cfg.Reports) > 0 {
		t.Errorf("reports: %q", v.cfg.Reports)
	}

	http := v.routes[rdsName(t, v.chain("0.0.0.0_80", 0))]
	if vh := vhost(t, http, "bookinfo.example.com:80"); vh.RequireTls != routev3.VirtualHost_ALL {
		t.Errorf("bookinfo.example.com on port 80: require_tls %v, want ALL (httpsRedirect)", vh.RequireTls)
	}
	plain := vhost(t, http, "plain.example.com:80")
	if plain.RequireTls != routev3.VirtualHost_NONE || plain.Routes[0].GetRoute().GetCluster() != "outbound|9080||productpage.default.svc.cluster.local" ||
		plain.Routes[0].GetRoute().GetTimeout().AsDuration().String() != "5s" {
		t.Errorf("plain.example.com: %v", plain)
	}

	https := v.chain("0.0.0.0_443", 0)
	if got := https.FilterChainMatch.GetServerNames(); !slices.Equal(got, []string{"bookinfo.example.com"}) {
		t.Errorf("443 SNI %v", got)
	}
	d := downstreamTLS(t, https)
	if d.RequireClientCertificate.GetValue() || d.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name != "kubernetes://bookinfo-cert" {
		t.Errorf("443 TLS: %v", d)
	}
	bi := vhost(t, v.routes[rdsName(t, https)], "bookinfo.example.com:443")
	if len(bi.Routes) != 2 || bi.Routes[0].GetMatch().GetPrefix() != "/productpage" || bi.Routes[1].GetMatch().GetPath() != "/login" {
		t.Errorf("bookinfo routes: %v", bi.Routes)
	}

	d = downstreamTLS(t, v.chain("0.0.0.0_8443", 0))
	if !d.RequireClientCertificate.GetValue() || d.CommonTlsContext.GetValidationContextSdsSecretConfig().GetName() != "kubernetes://mtls-cert-cacert" {
		t.Errorf("8443 MUTUAL: %v", d)
	}
	d = downstreamTLS(t, v.chain("0.0.0.0_9443", 0))
	if !d.RequireClientCertificate.GetValue() || d.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name != "default" ||
		d.CommonTlsContext.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
		t.Errorf("9443 ISTIO_MUTUAL: %v", d)
	}
	if got := v.cfg.Credentials; !slices.Equal(got, []string{"kubernetes://bookinfo-cert", "kubernetes://mtls-cert", "kubernetes://mtls-cert-cacert"}) {
		t.Errorf("credentials %v", got)
	}

	if c := tcpCluster(t, v.chain("0.0.0.0_31400", 0)); c != "outbound|9000||tcp-echo.default.svc.cluster.local" {
		t.Errorf("31400 -> %s", c)
	}
	pt := v.chain("0.0.0.0_15443", 0)
	if c := tcpCluster(t, pt); c != "outbound|443||nginx.default.svc.cluster.local" || !slices.Equal(pt.FilterChainMatch.GetServerNames(), []string{"nginx.example.com"}) || pt.TransportSocket != nil {
		t.Errorf("15443 passthrough: %v", pt)
	}
	if lf := v.listeners["0.0.0.0_15443"].ListenerFilters; len(lf) != 1 || lf[0].Name != "envoy.filters.listener.tls_inspector" {
		t.Errorf("15443 listener filters %v, want tls_inspector", lf)
	}
	if _, ok := v.listeners[xds.InboundListener]; ok {
		t.Error("a gateway got the sidecar's inbound listener")
	}
}

// TestEgressGateway: sidecars send httpbin.org to the egress gateway
// (the VirtualService's mesh rule), which sends it out (its gateway rule).
func TestEgressGateway(t *testing.T) {
	mesh := loadMesh(t, "testdata/gateway")
	egress := viewOf(t, mesh, egressNode)
	vh := vhost(t, egress.routes[rdsName(t, egress.chain("0.0.0.0_80", 0))], "httpbin.org:80")
	if c := vh.Routes[0].GetRoute().GetCluster(); c != "outbound|80||httpbin.org" {
		t.Errorf("egress gateway: httpbin.org -> %s", c)
	}
	sleep := viewOf(t, mesh, "sidecar~10.0.0.5~sleep.default~default.svc.cluster.local")
	vh = vhost(t, sleep.routes["80"], "httpbin.org:80")
	if c := vh.Routes[0].GetRoute().GetCluster(); c != "outbound|80||istio-egressgateway.istio-system.svc.cluster.local" {
		t.Errorf("sidecar: httpbin.org -> %s", c)
	}
	for _, n := range []string{"0.0.0.0_31400", "0.0.0.0_15443"} {
		if _, ok := sleep.listeners[n]; ok {
			t.Errorf("a sidecar got gateway listener %s", n)
		}
	}
}

// TestGatewayRefusals: server settings warden does not apply are
// reported by name and the server is left out (never served with a
// weaker check than asked); one that routes nothing is reported.
func TestGatewayRefusals(t *testing.T) {
	gw := func(name string, srv api.Server) api.Object {
		return &api.Gateway{Metadata: api.ObjectMeta{Name: name, Namespace: "default"},
			Spec: api.GatewaySpec{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []api.Server{srv}}}
	}
	objs := []api.Object{
		gw("spki", api.Server{Port: api.GatewayPort{Number: 443, Name: "https", Protocol: "HTTPS"}, Hosts: []string{"a.example.com"},
			TLS: &api.ServerTLSSettings{Mode: "MUTUAL", CredentialName: "a", VerifyCertificateSpki: []string{"abc"}}}),
		gw("auto", api.Server{Port: api.GatewayPort{Number: 15443, Name: "tls", Protocol: "TLS"}, Hosts: []string{"*.local"},
			TLS: &api.ServerTLSSettings{Mode: "AUTO_PASSTHROUGH"}}),
		gw("lonely", api.Server{Port: api.GatewayPort{Number: 31400, Name: "tcp", Protocol: "TCP"}, Hosts: []string{"*"}}),
	}
	services := []*xds.Service{{Host: "gw.istio-system.svc.cluster.local", Name: "gw", Namespace: "istio-system", Ports: []xds.ServicePort{{Number: 80, Name: "http"}},
		Endpoints: []xds.Endpoint{{Address: "10.0.9.1", Labels: map[string]string{"istio": "ingressgateway"}}}}}
	mesh, err := xds.NewMesh(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := viewOf(t, mesh, ingressNode)
	if len(v.listeners) != 0 {
		t.Errorf("listeners served: %v", slices.Sorted(mapKeys(v.listeners)))
	}
	for _, want := range []string{
		"Gateway default/spki: servers[0].tls.verifyCertificateSpki is not supported; the server is skipped",
		"Gateway default/auto: servers[0]: tls mode AUTO_PASSTHROUGH (multi-network) is not supported; the server is skipped",
		"Gateway default/lonely: servers[0] (port 31400, TCP) has no VirtualService tcp route bound to it; not served",
	} {
		if !slices.ContainsFunc(v.cfg.Reports, func(r string) bool { return strings.Contains(r, want) }) {
			t.Errorf("no report %q in %q", want, v.cfg.Reports)
		}
	}
}
