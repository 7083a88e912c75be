package xds_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds"
)

// meshFromYAML builds a mesh from Istio objects, ServiceEntries as the
// registry, as loadMesh does from a directory.
func meshFromYAML(t *testing.T, manifest string) *xds.Mesh {
	t.Helper()
	objs, err := api.Decode([]byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	return meshOf(t, objs)
}

// gatewayWorkload registers the ingress gateway proxy of ingressNode.
const gatewayWorkload = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  hosts: [istio-ingressgateway]
  resolution: STATIC
  ports: [{number: 80, name: http2}]
  endpoints: [{address: 10.0.9.1, labels: {istio: ingressgateway}, serviceAccount: istio-ingressgateway-service-account}]
`

// TestGatewayHostNamespaces: a server host's namespace part says whose
// VirtualServices it binds, as in Istio: "./a" only the Gateway's
// namespace (shop), "other/b" only namespace other, "*/c" any. Every
// namespace has a VirtualService for a and b bound to shop/gw, and apps
// (which sorts first, so it would win if the namespace were ignored) one
// for c; each host is routed by the one VirtualService the server lets
// in, and no other competes (no report).
func TestGatewayHostNamespaces(t *testing.T) {
	t.Parallel()
	manifest := gatewayWorkload + `
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [./a.example.com, other/b.example.com, "*/c.example.com"]
`
	for _, ns := range []string{"apps", "other", "shop"} {
		gateways, hosts := "[shop/gw]", "[a.example.com, b.example.com]"
		if ns == "shop" {
			gateways = "[gw]"
		}
		if ns == "apps" {
			hosts = "[a.example.com, b.example.com, c.example.com]"
		}
		manifest += `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: ` + ns + `}
spec:
  hosts: [echo]
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.0.1.1, labels: {app: echo}, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: ` + ns + `}
spec:
  hosts: ` + hosts + `
  gateways: ` + gateways + `
  http:
  - route: [{destination: {host: echo}}]
`
	}
	v := viewOf(t, meshFromYAML(t, manifest), ingressNode)
	if err := v.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(v.cfg.Reports) > 0 {
		t.Errorf("reports: %q", v.cfg.Reports)
	}
	rc := v.routes[rdsName(t, v.chain("0.0.0.0_80", 0))]
	var names []string
	for _, vh := range rc.VirtualHosts {
		names = append(names, vh.Name)
	}
	if want := []string{"a.example.com:80", "b.example.com:80", "c.example.com:80", "block_all"}; !slices.Equal(names, want) {
		t.Fatalf("http.80 virtual hosts %v, want %v", names, want)
	}
	for host, ns := range map[string]string{"a.example.com": "shop", "b.example.com": "other", "c.example.com": "apps"} {
		vh := vhost(t, rc, host+":80")
		if c := vh.Routes[0].GetRoute().GetCluster(); len(vh.Routes) != 1 || c != "outbound|8080||echo."+ns+".svc.cluster.local" {
			t.Errorf("%s -> %s (%d routes), want the VirtualService of %s", host, c, len(vh.Routes), ns)
		}
	}
}

// databases are the TCP services the gateway tests route to.
const databases = `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql, namespace: default}
spec:
  hosts: [mysql]
  addresses: [10.96.0.50]
  resolution: STATIC
  ports: [{number: 3306, name: tcp-mysql}]
  endpoints: [{address: 10.0.0.50, labels: {app: mysql}, serviceAccount: mysql}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pg, namespace: default}
spec:
  hosts: [pg]
  addresses: [10.96.0.51]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg}]
  endpoints: [{address: 10.0.0.51, labels: {app: pg}, serviceAccount: pg}]
`

// TestGatewayTLSTermination: a TLS server with tls.mode SIMPLE or MUTUAL
// terminates TLS with its credentialName over SDS (MUTUAL: the client CA
// from <name>-cacert, and with subjectAltNames those checked too), on a
// filter chain matched by SNI, and proxies the plaintext to the
// VirtualService tcp route for its port, as Istio does for a terminated
// TLS server (docs/xds.md: "TLS terminated as above, then the first tcp
// route").
func TestGatewayTLSTermination(t *testing.T) {
	t.Parallel()
	mesh := meshFromYAML(t, gatewayWorkload+`
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: db-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9000, name: tls-simple, protocol: TLS}
    hosts: [mysql.example.com]
    tls: {mode: SIMPLE, credentialName: mysql-cert}
  - port: {number: 9001, name: tls-mutual, protocol: TLS}
    hosts: [pg.example.com]
    tls: {mode: MUTUAL, credentialName: pg-cert}
  - port: {number: 9002, name: tls-mutual-san, protocol: TLS}
    hosts: [pg-san.example.com]
    tls: {mode: MUTUAL, credentialName: pg-cert, subjectAltNames: [client.example.com]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [mysql.example.com, pg.example.com, pg-san.example.com]
  gateways: [istio-system/db-gateway]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: mysql, port: {number: 3306}}}]
  - match: [{port: 9001}, {port: 9002}]
    route: [{destination: {host: pg, port: {number: 5432}}}]
`+databases)
	v := viewOf(t, mesh, ingressNode)
	if err := v.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(v.cfg.Reports) > 0 {
		t.Errorf("reports: %q", v.cfg.Reports)
	}
	for _, tc := range []struct {
		listener, sni, cluster, cert, ca string
		san                              string // MUTUAL with subjectAltNames: the combined validation context's SAN
	}{
		{"0.0.0.0_9000", "mysql.example.com", "outbound|3306||mysql.default.svc.cluster.local", "kubernetes://mysql-cert", "", ""},
		{"0.0.0.0_9001", "pg.example.com", "outbound|5432||pg.default.svc.cluster.local", "kubernetes://pg-cert", "kubernetes://pg-cert-cacert", ""},
		{"0.0.0.0_9002", "pg-san.example.com", "outbound|5432||pg.default.svc.cluster.local", "kubernetes://pg-cert", "kubernetes://pg-cert-cacert", "client.example.com"},
	} {
		if n := len(v.listeners[tc.listener].GetFilterChains()); n != 1 {
			t.Errorf("%s: %d filter chains, want 1", tc.listener, n)
		}
		fc := v.chain(tc.listener, 0)
		if got := fc.GetFilterChainMatch().GetServerNames(); !slices.Equal(got, []string{tc.sni}) {
			t.Errorf("%s: SNI %v, want %s", tc.listener, got, tc.sni)
		}
		if lf := v.listeners[tc.listener].ListenerFilters; len(lf) != 1 || lf[0].Name != "envoy.filters.listener.tls_inspector" {
			t.Errorf("%s: listener filters %v, want tls_inspector (SNI match)", tc.listener, lf)
		}
		if len(fc.Filters) != 1 || fc.Filters[0].Name != "envoy.filters.network.tcp_proxy" {
			t.Fatalf("%s: filters %v, want a tcp_proxy only", tc.listener, fc.Filters)
		}
		if c := tcpCluster(t, fc); c != tc.cluster {
			t.Errorf("%s -> %s, want %s", tc.listener, c, tc.cluster)
		}
		d := downstreamTLS(t, fc)
		cc := d.GetCommonTlsContext()
		if sds := cc.GetTlsCertificateSdsSecretConfigs(); len(sds) != 1 || sds[0].GetName() != tc.cert || sds[0].GetSdsConfig().GetAds() == nil {
			t.Errorf("%s: certificate SDS %v, want %s over ADS", tc.listener, sds, tc.cert)
		}
		if len(cc.GetTlsCertificates()) > 0 {
			t.Errorf("%s: inline or file certificates beside credentialName: %v", tc.listener, cc.GetTlsCertificates())
		}
		switch {
		case tc.ca == "":
			if d.GetRequireClientCertificate().GetValue() || cc.GetValidationContextType() != nil {
				t.Errorf("%s SIMPLE: client certificate required %v, validation %v; want neither", tc.listener, d.GetRequireClientCertificate(), cc.GetValidationContextType())
			}
		case tc.san == "":
			if !d.GetRequireClientCertificate().GetValue() || cc.GetValidationContextSdsSecretConfig().GetName() != tc.ca {
				t.Errorf("%s MUTUAL: require client certificate %v, validation context %v; want true, SDS %s", tc.listener, d.GetRequireClientCertificate(), cc.GetValidationContextType(), tc.ca)
			}
		default:
			comb := cc.GetCombinedValidationContext()
			var sans []string
			for _, m := range comb.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
				sans = append(sans, m.GetSanType().String()+":"+m.GetMatcher().GetExact())
			}
			if !d.GetRequireClientCertificate().GetValue() || comb.GetValidationContextSdsSecretConfig().GetName() != tc.ca ||
				strings.Join(sans, ",") != "DNS:"+tc.san+",URI:"+tc.san {
				t.Errorf("%s MUTUAL with subjectAltNames: require %v, CA %q, SANs %v", tc.listener, d.GetRequireClientCertificate(),
					comb.GetValidationContextSdsSecretConfig().GetName(), sans)
			}
		}
	}
	if got, want := v.cfg.Credentials, []string{"kubernetes://mysql-cert", "kubernetes://pg-cert", "kubernetes://pg-cert-cacert"}; !slices.Equal(got, want) {
		t.Errorf("credentials %v, want %v", got, want)
	}
	if len(v.routes) != 0 {
		t.Errorf("route tables for TCP servers: %v", slices.Sorted(mapKeys(v.routes)))
	}
}

// TestGatewayTCPMatchShortGatewayName: a short name in a tcp match's
// gateways means a Gateway of the VirtualService's own namespace, as in
// Istio, not of the Gateway's. The VirtualService in default binds
// istio-system/tcp-gw at its top level; its first rule's match names
// "tcp-gw" (default/tcp-gw, which does not exist) and so never applies
// there, and the second rule, naming istio-system/tcp-gw, routes the port.
func TestGatewayTCPMatchShortGatewayName(t *testing.T) {
	t.Parallel()
	mesh := meshFromYAML(t, gatewayWorkload+`
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9100, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: ["*"]
  gateways: [istio-system/tcp-gw]
  tcp:
  - match: [{port: 9100, gateways: [tcp-gw]}]
    route: [{destination: {host: mysql, port: {number: 3306}}}]
  - match: [{port: 9100, gateways: [istio-system/tcp-gw]}]
    route: [{destination: {host: pg, port: {number: 5432}}}]
`+databases)
	v := viewOf(t, mesh, ingressNode)
	if err := v.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if c := tcpCluster(t, v.chain("0.0.0.0_9100", 0)); c != "outbound|5432||pg.default.svc.cluster.local" {
		t.Errorf("port 9100 goes to %s, want pg's cluster: the short name tcp-gw is default/tcp-gw", c)
	}
}

// TestVirtualHostAddressDomains: an HTTP service is also reached by its
// address (a client that dials the ClusterIP or ServiceEntry address
// sends it as the Host), as in Istio; two services claiming one address
// on a port would make Envoy refuse the whole route table, so the first
// keeps it and the second is reported.
func TestVirtualHostAddressDomains(t *testing.T) {
	t.Parallel()
	mesh := meshFromYAML(t, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  addresses: [10.96.7.7]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.7.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  addresses: [10.96.7.7, "2001:db8::7"]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.7.2}]
`)
	v := viewOf(t, mesh, "sidecar~10.0.7.9~c.default~default.svc.cluster.local")
	if err := v.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	domains := map[string][]string{}
	for _, vh := range v.routes["80"].GetVirtualHosts() {
		domains[vh.Name] = vh.Domains
	}
	var a, b []string
	for name, d := range domains {
		switch {
		case strings.HasPrefix(name, "a.example.com"):
			a = d
		case strings.HasPrefix(name, "b.example.com"):
			b = d
		}
	}
	if !slices.Contains(a, "10.96.7.7") || !slices.Contains(a, "10.96.7.7:80") {
		t.Errorf("a's domains %q lack its address", a)
	}
	if slices.Contains(b, "10.96.7.7") || !slices.Contains(b, "[2001:db8::7]:80") {
		t.Errorf("b's domains %q: want its own IPv6 address and not a's", b)
	}
	if !slices.ContainsFunc(v.cfg.Reports, func(r string) bool {
		return strings.Contains(r, "a.example.com and b.example.com are both called 10.96.7.7")
	}) {
		t.Errorf("reports %q lack the shared address", v.cfg.Reports)
	}
}
