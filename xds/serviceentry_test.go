package xds_test

import (
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/xds"
)

// partnerEntry is the ServiceEntry of a service in another trust domain:
// DNS resolution, a hostname endpoint on another network, and the
// identity its server presents.
const partnerEntry = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.partner.test]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: api.partner.test, network: n2, locality: us/east}]
  subjectAltNames: ["spiffe://partner.test/ns/api/sa/api"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.4, labels: {app: sleep}, serviceAccount: sleep}]
`

const sleepNode = "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local"

func entryMesh(t *testing.T, yaml string, opts xds.Options) *xds.Mesh {
	t.Helper()
	objs, err := api.Decode([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := xds.NewMesh(objs, services, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func proxyConfig(t *testing.T, m *xds.Mesh, node, generator string) *xds.Config {
	t.Helper()
	p, err := xds.ParseNodeID(node)
	if err != nil {
		t.Fatal(err)
	}
	p.Generator = generator
	cfg, _, err := m.ProxyConfig(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func findCluster(t *testing.T, cfg *xds.Config, name string) *clusterv3.Cluster {
	t.Helper()
	for _, r := range cfg.Clusters {
		if c := r.(*clusterv3.Cluster); c.Name == name {
			return c
		}
	}
	t.Fatalf("no cluster %s", name)
	return nil
}

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	ut := &tlsv3.UpstreamTlsContext{}
	if c.GetTransportSocket().GetTypedConfig() == nil {
		t.Fatalf("cluster %s has no TLS", c.Name)
	}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(ut); err != nil {
		t.Fatal(err)
	}
	return ut
}

// sans renders typed SAN matchers as TYPE:exact.
func sans(ms []*tlsv3.SubjectAltNameMatcher) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.GetSanType().String()+":"+m.GetMatcher().GetExact())
	}
	return out
}

func hasReport(reports []string, parts ...string) bool {
	return slices.ContainsFunc(reports, func(r string) bool {
		for _, p := range parts {
			if !strings.Contains(r, p) {
				return false
			}
		}
		return true
	})
}

// TestServiceEntryFieldsCompiled: the ServiceEntry of partnerEntry gives
// the cluster Istio gives: STRICT_DNS with the endpoint inline (not EDS),
// ISTIO_MUTUAL accepting exactly the entry's subjectAltNames (its
// endpoint has no service account, so Istio checks no other name); the
// network and locality it cannot honour are reported by name.
func TestServiceEntryFieldsCompiled(t *testing.T) {
	t.Parallel()
	m := entryMesh(t, partnerEntry, xds.Options{})
	cfg := proxyConfig(t, m, sleepNode, xds.GeneratorEnvoy)
	c := findCluster(t, cfg, "outbound|443||api.partner.test")
	if c.GetType() != clusterv3.Cluster_STRICT_DNS || c.GetEdsClusterConfig() != nil {
		t.Errorf("cluster type %s (eds %v), want STRICT_DNS with the endpoints inline", c.GetType(), c.GetEdsClusterConfig())
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].LbEndpoints) != 1 {
		t.Fatalf("load assignment %v, want one endpoint", c.GetLoadAssignment())
	}
	if sa := eps[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress(); sa.GetAddress() != "api.partner.test" || sa.GetPortValue() != 443 {
		t.Errorf("endpoint %v, want api.partner.test:443", sa)
	}
	for _, r := range cfg.Endpoints {
		if xds.ResourceName(r) == c.Name {
			t.Errorf("EDS resource %s sent for a DNS cluster", c.Name)
		}
	}
	vc := upstreamTLS(t, c).GetCommonTlsContext().GetCombinedValidationContext()
	if got, want := sans(vc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()), []string{"URI:spiffe://partner.test/ns/api/sa/api"}; !slices.Equal(got, want) {
		t.Errorf("SAN matchers %v, want %v", got, want)
	}
	if vc.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
		t.Errorf("validation context %v, want SDS ROOTCA", vc)
	}
	for _, field := range []string{"endpoints[0].network \"n2\"", "endpoints[0].locality \"us/east\""} {
		if !hasReport(cfg.Reports, "ServiceEntry default/ext", field) {
			t.Errorf("no report names %s: %q", field, cfg.Reports)
		}
	}

	// Proxyless gRPC (mesh TLS by a DestinationRule: it has no
	// PERMISSIVE fallback): EDS, as Istio's grpc generator, and the same
	// names, untyped as grpc-go reads them.
	g := proxyConfig(t, entryMesh(t, partnerEntry+`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: default}
spec: {host: api.partner.test, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
`, xds.Options{}), sleepNode, xds.GeneratorGRPC)
	gc := findCluster(t, g, "outbound|443||api.partner.test")
	if gc.GetType() != clusterv3.Cluster_EDS {
		t.Errorf("gRPC cluster type %s, want EDS", gc.GetType())
	}
	gvc := upstreamTLS(t, gc).GetCommonTlsContext().GetValidationContext()
	//lint:ignore SA1019 grpc-go reads only the deprecated match_subject_alt_names
	gm := gvc.GetMatchSubjectAltNames()
	if len(gm) != 1 || gm[0].GetExact() != "spiffe://partner.test/ns/api/sa/api" {
		t.Errorf("gRPC SAN matchers %v, want the entry's subjectAltNames", gm)
	}
	if !hasReport(g.Reports, "api.partner.test", "resolution DNS", "proxyless gRPC") {
		t.Errorf("no report says gRPC gets EDS for a DNS entry: %q", g.Reports)
	}
}

// TestServiceEntryMeshTLSNames: the names an ISTIO_MUTUAL cluster
// accepts, as Istio joins them: the endpoints' service accounts and the
// entry's subjectAltNames (a SPIFFE ID a URI SAN, a DNS name a DNS SAN);
// a DestinationRule's subjectAltNames replace them; with neither, the
// endpoints' identities as default (never none: that would accept any
// mesh identity).
func TestServiceEntryMeshTLSNames(t *testing.T) {
	t.Parallel()
	const entry = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.1.1, serviceAccount: web}, {address: 10.0.1.2}]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/web-canary, web.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bare, namespace: default}
spec:
  hosts: [bare]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.2.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pinned, namespace: default}
spec:
  hosts: [pinned]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.3.1, serviceAccount: pinned}]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/other]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pinned, namespace: default}
spec:
  host: pinned
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/pinned-v2]}}
`
	m := entryMesh(t, entry+partnerEntry[strings.Index(partnerEntry, "---"):], xds.Options{})
	cfg := proxyConfig(t, m, sleepNode, xds.GeneratorEnvoy)
	for host, want := range map[string][]string{
		"web.default.svc.cluster.local":    {"URI:spiffe://cluster.local/ns/default/sa/web", "URI:spiffe://cluster.local/ns/default/sa/web-canary", "DNS:web.example.com"},
		"bare.default.svc.cluster.local":   {"URI:spiffe://cluster.local/ns/default/sa/default"},
		"pinned.default.svc.cluster.local": {"URI:spiffe://cluster.local/ns/default/sa/pinned-v2"},
	} {
		c := findCluster(t, cfg, "outbound|80||"+host)
		got := sans(upstreamTLS(t, c).GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames())
		if !slices.Equal(got, want) {
			t.Errorf("%s: SAN matchers %v, want %v", host, got, want)
		}
	}
}

// TestServiceEntryResolution: resolution sets the cluster type as
// Istio's convertResolution does, for a sidecar and a gateway; a
// passthrough entry gets no automatic mesh TLS.
func TestServiceEntryResolution(t *testing.T) {
	t.Parallel()
	const entries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr, namespace: default}
spec:
  hosts: [rr.example.com]
  location: MESH_EXTERNAL
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pass, namespace: default}
spec:
  hosts: [pass.example.com]
  addresses: [198.51.100.0/24]
  location: MESH_INTERNAL
  resolution: NONE
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dyn, namespace: default}
spec:
  hosts: [dyn.example.com]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.7.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: gw, namespace: istio-system}
spec:
  hosts: [gw]
  resolution: STATIC
  ports: [{number: 443, name: https}]
  endpoints: [{address: 10.0.9.1, labels: {istio: ingressgateway}, serviceAccount: gw}]
`
	m := entryMesh(t, entries+partnerEntry[strings.Index(partnerEntry, "---"):], xds.Options{})
	side := proxyConfig(t, m, sleepNode, xds.GeneratorEnvoy)
	rr := findCluster(t, side, "outbound|443||rr.example.com")
	if rr.GetType() != clusterv3.Cluster_LOGICAL_DNS {
		t.Errorf("DNS_ROUND_ROBIN: type %s, want LOGICAL_DNS", rr.GetType())
	}
	if eps := rr.GetLoadAssignment().GetEndpoints(); len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Errorf("DNS_ROUND_ROBIN load assignment %v, want one endpoint", rr.GetLoadAssignment())
	} else if sa := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); sa.GetAddress() != "rr.example.com" || sa.GetPortValue() != 8443 {
		t.Errorf("DNS_ROUND_ROBIN endpoint %v, want the host on the targetPort", sa)
	}
	pass := findCluster(t, side, "outbound|5432||pass.example.com")
	if pass.GetType() != clusterv3.Cluster_ORIGINAL_DST {
		t.Errorf("NONE at a sidecar: type %s, want ORIGINAL_DST", pass.GetType())
	}
	if pass.GetTransportSocket() != nil {
		// Istio's BestEffortInferServiceMTLSMode: no known instance, no
		// auto-mTLS.
		t.Errorf("NONE without endpoints: mesh TLS turned on automatically")
	}
	if got := findCluster(t, side, "outbound|80||dyn.example.com").GetType(); got != clusterv3.Cluster_EDS {
		t.Errorf("DYNAMIC_DNS: type %s, want EDS", got)
	}
	if !hasReport(side.Reports, "ServiceEntry default/dyn", "resolution DYNAMIC_DNS") {
		t.Errorf("DYNAMIC_DNS not reported: %q", side.Reports)
	}
	gw := proxyConfig(t, m, "router~10.0.9.1~gw-1.istio-system~istio-system.svc.cluster.local", xds.GeneratorEnvoy)
	if got := findCluster(t, gw, "outbound|5432||pass.example.com").GetType(); got != clusterv3.Cluster_EDS {
		t.Errorf("NONE at a gateway: type %s, want EDS (a gateway cannot pass through)", got)
	}
}

// TestServiceEntryReports: EntryReports names each field warden does not
// honour (policy check prints them), and only those.
func TestServiceEntryReports(t *testing.T) {
	t.Parallel()
	objs, err := api.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: shop}
spec:
  hosts: [a.example.com]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.1, network: n2}, {address: 10.0.0.2, locality: us/east/1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: shop}
spec:
  hosts: [b.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS
  workloadSelector: {labels: {app: b}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c, namespace: shop}
spec:
  hosts: [c.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: c1.example.com}, {address: c2.example.com}]
  subjectAltNames: [c.example.com]
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, xds.EntryReports(o.(*api.ServiceEntry))...)
	}
	want := []string{
		`ServiceEntry shop/a: resolution NONE (the default) takes no endpoints (Istio refuses them); warden balances over them as with resolution STATIC: set resolution: STATIC`,
		`ServiceEntry shop/a: endpoints[0].network "n2" is not supported (multi-network); the endpoint is dialed directly at 10.0.0.1`,
		`ServiceEntry shop/a: endpoints[1].locality "us/east/1" is not supported (no locality-aware load balancing); the endpoint is balanced with the others`,
		`ServiceEntry shop/b: workloadSelector (WorkloadEntries and pods as endpoints) is not supported; the service has only the endpoints listed in endpoints`,
		`ServiceEntry shop/c: resolution DNS_ROUND_ROBIN takes one endpoint (Envoy's LOGICAL_DNS); only endpoints[0] c1.example.com is used`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("reports:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestServiceEntryFederatedServer: a federating sidecar calling a
// ServiceEntry whose subjectAltNames name a foreign workload validates
// the server with the SPIFFE validator (the foreign trust domain's own
// bundle) and accepts exactly that ID: field by field.
func TestServiceEntryFederatedServer(t *testing.T) {
	t.Parallel()
	local, partner := testRoot(t, "local"), testRoot(t, "partner")
	partnerTD := spiffeid.RequireTrustDomainFromString("partner.test")
	bundles := &staticBundles{local: []*x509.Certificate{local}, byNS: map[string]map[spiffeid.TrustDomain][]*x509.Certificate{
		"default": {partnerTD: {partner}},
	}}
	m := entryMesh(t, partnerEntry, xds.Options{TrustBundles: bundles})
	cfg := proxyConfig(t, m, sleepNode, xds.GeneratorEnvoy)
	c := findCluster(t, cfg, "outbound|443||api.partner.test")
	ut := upstreamTLS(t, c)
	if ut.GetSni() != "outbound_.443_._.api.partner.test" {
		t.Errorf("SNI %q", ut.GetSni())
	}
	cc := ut.GetCommonTlsContext()
	if sds := cc.GetTlsCertificateSdsSecretConfigs(); len(sds) != 1 || sds[0].GetName() != "default" {
		t.Errorf("client certificate %v, want SDS default", sds)
	}
	vc := cc.GetValidationContext()
	if vc == nil {
		t.Fatalf("validation context %T, want an inline one with the SPIFFE validator", cc.GetValidationContextType())
	}
	if got, want := sans(vc.GetMatchTypedSubjectAltNames()), []string{"URI:spiffe://partner.test/ns/api/sa/api"}; !slices.Equal(got, want) {
		t.Errorf("SAN matchers %v, want %v", got, want)
	}
	if vc.GetTrustedCa() != nil || vc.GetCaCertificateProviderInstance() != nil {
		t.Errorf("validation context also has roots of its own: %v", vc)
	}
	if vc.GetCustomValidatorConfig().GetName() != xds.SPIFFEValidator {
		t.Fatalf("validator %q, want %s", vc.GetCustomValidatorConfig().GetName(), xds.SPIFFEValidator)
	}
	sv := &tlsv3.SPIFFECertValidatorConfig{}
	if err := vc.GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(sv); err != nil {
		t.Fatal(err)
	}
	var tds []string
	for _, td := range sv.GetTrustDomains() {
		tds = append(tds, td.GetName())
		want := local
		if td.GetName() == "partner.test" {
			want = partner
		}
		certs, err := ca.ParseCerts(td.GetTrustBundle().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		if len(certs) != 1 || !certs[0].Equal(want) {
			t.Errorf("trust domain %s: bundle is not its own root alone", td.GetName())
		}
	}
	if !slices.Equal(tds, []string{"cluster.local", "partner.test"}) {
		t.Errorf("trust domains %v, want cluster.local and partner.test", tds)
	}
}

// TestServiceEntrySimpleTLSNames: a SIMPLE DestinationRule without
// subjectAltNames checks the ServiceEntry's, as Istio's
// constructUpstreamTLS does; the rule's own replace them; a SPIFFE ID is
// matched as a URI SAN, not a DNS name no certificate can carry.
func TestServiceEntrySimpleTLSNames(t *testing.T) {
	t.Parallel()
	const entries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec:
  hosts: [a.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  subjectAltNames: ["spiffe://partner.test/ns/a/sa/a", a.example.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a, namespace: default}
spec: {host: a.example.com, trafficPolicy: {tls: {mode: SIMPLE}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b, namespace: default}
spec:
  hosts: [b.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  subjectAltNames: [b.example.com]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: default}
spec: {host: b.example.com, trafficPolicy: {tls: {mode: SIMPLE, subjectAltNames: ["spiffe://partner.test/ns/b/sa/b"]}}}
`
	cfg := proxyConfig(t, entryMesh(t, entries+partnerEntry[strings.Index(partnerEntry, "---"):], xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	for host, want := range map[string][]string{
		"a.example.com": {"URI:spiffe://partner.test/ns/a/sa/a", "DNS:a.example.com"},
		"b.example.com": {"URI:spiffe://partner.test/ns/b/sa/b"},
	} {
		c := findCluster(t, cfg, "outbound|443||"+host)
		got := sans(upstreamTLS(t, c).GetCommonTlsContext().GetValidationContext().GetMatchTypedSubjectAltNames())
		if !slices.Equal(got, want) {
			t.Errorf("%s: SAN matchers %v, want %v", host, got, want)
		}
	}
}
