package xds_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// oracleClusterResult is the part of a -listeners answer with the
// proxy's clusters (hack/istioauthz/clusters.go).
type oracleClusterResult struct {
	Clusters []struct {
		Name string   `json:"name"`
		Type string   `json:"type"`
		MTLS bool     `json:"mtls"`
		SANs []string `json:"sans"`
	} `json:"clusters"`
	Warnings []string `json:"warnings"`
	Error    string   `json:"error"`
}

// serviceEntryOracleYAML: every resolution a sidecar compiles, with and
// without subjectAltNames, endpoints with and without service accounts,
// and a DestinationRule's own subjectAltNames.
const serviceEntryOracleYAML = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.0.4, labels: {app: sleep}, serviceAccount: sleep}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.partner.test]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: api.partner.test}]
  subjectAltNames: ["spiffe://partner.test/ns/api/sa/api"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.1.1, serviceAccount: web}, {address: 10.0.1.2}]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/web-canary, web.example.com]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: grpc, protocol: GRPC}]
  endpoints: [{address: 10.0.2.1, serviceAccount: api}, {address: 10.0.2.2, serviceAccount: api-v2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr, namespace: default}
spec:
  hosts: [rr.partner.test]
  location: MESH_INTERNAL
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 8443, name: tls, protocol: TLS}]
  subjectAltNames: ["spiffe://partner.test/ns/rr/sa/rr"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.partner.test]
  addresses: [198.51.100.0/24]
  location: MESH_INTERNAL
  resolution: NONE
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  subjectAltNames: ["spiffe://partner.test/ns/db/sa/db"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pinned, namespace: default}
spec:
  hosts: [pinned.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 10.0.3.1, serviceAccount: pinned}]
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/other]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pinned, namespace: default}
spec:
  host: pinned.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/pinned-v2]}}
`

// TestIstioServiceEntryClusters compares the sleep sidecar's outbound
// clusters with those Istio's own generator builds for the same
// ServiceEntries (hack/istioauthz -listeners, its clusters): each of
// Istio's outbound clusters exists in warden with the same type
// (resolution) and mesh TLS on or off as Istio's (a passthrough entry
// with no endpoints gets none), and where Istio's checks the server's
// names, warden's accepts exactly the same names.
func TestIstioServiceEntryClusters(t *testing.T) {
	in := []oracleListenerCase{{ID: "serviceentry", YAML: serviceEntryOracleYAML,
		Proxy: oracleProxy{Type: "sidecar", Namespace: "default", Labels: map[string]string{"app": "sleep"}, IP: "10.0.0.4"}}}
	answers := testkit.AskIstio(t, []string{"-listeners"}, in)
	var res oracleClusterResult
	if err := json.Unmarshal(answers[0], &res); err != nil {
		t.Fatalf("oracle answer: %v", err)
	}
	if res.Error != "" || len(res.Warnings) > 0 {
		t.Fatalf("Istio: error %q, warnings %q", res.Error, res.Warnings)
	}
	cfg := proxyConfig(t, entryMesh(t, serviceEntryOracleYAML, xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	warden := map[string]*clusterv3.Cluster{}
	for _, r := range cfg.Clusters {
		c := r.(*clusterv3.Cluster)
		warden[c.Name] = c
	}
	compared, withNames := 0, 0
	for _, ic := range res.Clusters {
		if !strings.HasPrefix(ic.Name, "outbound|") {
			continue
		}
		wc := warden[ic.Name]
		if wc == nil {
			t.Errorf("%s: Istio has it, warden does not", ic.Name)
			continue
		}
		compared++
		if got := wc.GetType().String(); got != ic.Type {
			t.Errorf("%s: type %s, Istio %s", ic.Name, got, ic.Type)
		}
		if !ic.MTLS {
			if wc.GetTransportSocket() != nil {
				t.Errorf("%s: warden turns TLS on, Istio does not", ic.Name)
			}
			continue
		}
		ut := &tlsv3.UpstreamTlsContext{}
		if err := wc.GetTransportSocket().GetTypedConfig().UnmarshalTo(ut); err != nil {
			t.Errorf("%s: Istio has mesh TLS, warden none: %v", ic.Name, err)
			continue
		}
		var got []string
		for _, m := range ut.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
			got = append(got, m.GetMatcher().GetExact())
		}
		slices.Sort(got)
		if len(ic.SANs) > 0 {
			withNames++
		}
		if !slices.Equal(got, ic.SANs) {
			t.Errorf("%s: accepts %q, Istio %q", ic.Name, got, ic.SANs)
		}
	}
	if compared < 7 || withNames < 6 {
		t.Fatalf("compared %d clusters, %d with names: the case no longer shows anything", compared, withNames)
	}
}
