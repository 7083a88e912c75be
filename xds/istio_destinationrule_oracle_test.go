package xds_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// destinationRuleOracleYAML: a DestinationRule setting every traffic
// policy field warden compiles onto a cluster, at the top level, on a port
// (which replaces the rule's policies for it) and in two subsets, for a
// service with an HTTP, a gRPC and a TCP port; and SIMPLE TLS to an
// external service whose endpoints have no service account (Istio's
// auto_san_validation).
const destinationRuleOracleYAML = `
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
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}, {number: 8080, name: grpc, protocol: GRPC}, {number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.0.2.1, labels: {version: v1}, serviceAccount: api}, {address: 10.0.2.2, labels: {version: v2}, serviceAccount: api}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {duration: 30s, minimumPercent: 20, aggression: 2}
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 3s
        tcpKeepalive: {probes: 4, time: 60s, interval: 15s}
        maxConnectionDuration: 1h
        idleTimeout: 5m
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 5, maxRetries: 3, idleTimeout: 90s, maxConcurrentStreams: 50, http2KeepAlive: {interval: 20s, timeout: 5s}}
    outlierDetection:
      consecutive5xxErrors: 5
      consecutiveGatewayErrors: 0
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 3
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
      minHealthPercent: 25
      outlierDetectionHttpErrorCodes: [503, 504]
    retryBudget: {percent: 30, minRetryConcurrency: 4, budgetInterval: 10s}
    tls: {mode: ISTIO_MUTUAL, sni: api.mesh.example}
    portLevelSettings:
    - port: {number: 9000}
      loadBalancer:
        consistentHash: {maglev: {tableSize: 65537}, useSourceIp: true}
      tls: {mode: SIMPLE, sni: db.example.com, caCertificates: /etc/certs/ca.pem, caCrl: /etc/certs/crl.pem, subjectAltNames: [db.example.com]}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 20s}
      connectionPool:
        http: {h2UpgradePolicy: UPGRADE}
      tls: {mode: SIMPLE, insecureSkipVerify: true}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash: {ringHash: {minimumRingSize: 2048}, httpHeaderName: x-user}
      connectionPool:
        http: {useClientProtocol: true}
      tls: {mode: MUTUAL, clientCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: https, protocol: HTTP}]
  endpoints: [{address: 192.0.2.10}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.example.com
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    tls: {mode: SIMPLE, caCertificates: /etc/certs/web-ca.pem}
`

// drClusterFields are the parts of a cluster a DestinationRule's traffic
// policy sets, as JSON paths; "tls" stands for the upstream TLS context's
// server name, roots, revocation list and accepted names (Istio serves
// files over its agent's SDS, warden names them directly), "http" for the
// HTTP protocol options (without Istio's auto_sni, see below).
var drClusterFields = []string{"lbPolicy", "connectTimeout", "roundRobinLbConfig", "leastRequestLbConfig", "ringHashLbConfig",
	"maglevLbConfig", "outlierDetection", "commonLbConfig.healthyPanicThreshold", "upstreamConnectionOptions",
	"circuitBreakers.thresholds.0.retryBudget", "http", "tls"}

// TestIstioDestinationRuleClusters compares the sleep sidecar's clusters
// for a DestinationRule using every traffic policy field warden compiles
// with those Istio's own cluster builder makes for it (hack/istioauthz
// -listeners, the clusters as protojson): each part of drClusterFields is
// the same, and each circuit breaker limit warden sets is Istio's.
func TestIstioDestinationRuleClusters(t *testing.T) {
	in := []oracleListenerCase{{ID: "destinationrule", YAML: destinationRuleOracleYAML,
		Proxy: oracleProxy{Type: "sidecar", Namespace: "default", Labels: map[string]string{"app": "sleep"}, IP: "10.0.0.4"}}}
	answers := testkit.AskIstio(t, []string{"-listeners"}, in)
	var res struct {
		Clusters []struct {
			Name    string          `json:"name"`
			Cluster json.RawMessage `json:"cluster"`
		} `json:"clusters"`
		Warnings []string `json:"warnings"`
		Error    string   `json:"error"`
	}
	if err := json.Unmarshal(answers[0], &res); err != nil {
		t.Fatalf("oracle answer: %v", err)
	}
	if res.Error != "" || len(res.Warnings) > 0 {
		t.Fatalf("Istio: error %q, warnings %q", res.Error, res.Warnings)
	}
	cfg := proxyConfig(t, entryMesh(t, destinationRuleOracleYAML, xds.Options{}), sleepNode, xds.GeneratorEnvoy)
	warden := map[string]map[string]any{}
	for _, r := range cfg.Clusters {
		b, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		warden[jsonField(t, b, "name").(string)] = jsonObject(t, b)
	}
	compared := 0
	for _, ic := range res.Clusters {
		if !strings.Contains(ic.Name, "|api.default.svc.cluster.local") && !strings.Contains(ic.Name, "|web.example.com") {
			continue
		}
		wc := warden[ic.Name]
		if wc == nil {
			t.Errorf("%s: Istio has it, warden does not", ic.Name)
			continue
		}
		compared++
		istio := jsonObject(t, ic.Cluster)
		for _, f := range drClusterFields {
			got, want := drPart(wc, f), drPart(istio, f)
			if !jsonEqual(got, want) {
				t.Errorf("%s: %s\nwarden %s\nIstio  %s", ic.Name, f, show(got), show(want))
			}
		}
		for _, limit := range []string{"maxConnections", "maxPendingRequests", "maxRequests", "maxRetries"} {
			if got := pathOf(wc, "circuitBreakers.thresholds.0."+limit); got != nil && !jsonEqual(got, pathOf(istio, "circuitBreakers.thresholds.0."+limit)) {
				t.Errorf("%s: %s %v, Istio %v", ic.Name, limit, got, pathOf(istio, "circuitBreakers.thresholds.0."+limit))
			}
		}
	}
	if compared != 10 {
		t.Fatalf("compared %d clusters, want 10 (api's 3 ports, the service and 2 subsets; web's)", compared)
	}
}

// drPart is part f of cluster c (see drClusterFields).
func drPart(c map[string]any, f string) any {
	switch f {
	case "lbPolicy":
		if v := pathOf(c, f); v != nil {
			return v
		}
		return "ROUND_ROBIN" // protojson leaves out the enum's zero
	case "commonLbConfig.healthyPanicThreshold":
		// Istio sets 0 (panic mode off) on every cluster; warden only
		// for outlierDetection's minHealthPercent, else Envoy's default.
		if v, ok := pathOf(c, f).(map[string]any); ok && len(v) == 0 {
			return nil
		}
		return pathOf(c, f)
	case "http":
		h, _ := pathOf(c, "typedExtensionProtocolOptions.envoy\\.extensions\\.upstreams\\.http\\.v3\\.HttpProtocolOptions").(map[string]any)
		if h == nil {
			return nil
		}
		h = maps.Clone(h)
		// Istio's auto_sni and auto_san_validation: warden sets the
		// server name itself (see "tls").
		delete(h, "upstreamHttpProtocolOptions")
		// outlierDetectionHttpErrorCodes: the pinned Istio predates
		// it (Istio's master builds it as warden does, in
		// applyOutlierDetectionErrorCodes);
		// TestDestinationRuleOutlierErrorCodes checks warden's.
		delete(h, "outlierDetection")
		if len(h) == 2 && jsonEqual(h["explicitHttpConfig"], map[string]any{"httpProtocolOptions": map[string]any{}}) {
			return nil // HTTP/1.1, Envoy's default without options
		}
		if len(h) == 1 {
			return nil // only @type
		}
		return h
	case "tls":
		ut, _ := pathOf(c, "transportSocket.typedConfig").(map[string]any)
		if ut == nil {
			return nil
		}
		out := map[string]any{"sni": ut["sni"]}
		if ut["sni"] == nil && pathOf(c, "typedExtensionProtocolOptions.envoy\\.extensions\\.upstreams\\.http\\.v3\\.HttpProtocolOptions.upstreamHttpProtocolOptions.autoSni") == true {
			// Istio's SIMPLE or MUTUAL without sni: the request's
			// host (auto_sni), none over TCP; warden's: the service's
			// host, always (a deliberate difference, docs/istio.md).
			out["sni"] = strings.Split(pathOf(c, "name").(string), "|")[3]
		}
		ctx, _ := ut["commonTlsContext"].(map[string]any)
		vc := pathOf(ctx, "validationContext")
		if cv := pathOf(ctx, "combinedValidationContext"); cv != nil {
			vc = pathOf(cv.(map[string]any), "defaultValidationContext")
			// Istio's SDS names for files: file-root:<path>, "system"
			// for the OS roots.
			if name, _ := pathOf(cv.(map[string]any), "validationContextSdsSecretConfig.name").(string); strings.HasPrefix(name, "file-root:") {
				root := strings.TrimPrefix(name, "file-root:")
				if root == "system" {
					root = xds.SystemRoots
				}
				out["roots"] = root
			} else {
				out["roots"] = name
			}
		}
		if m, ok := vc.(map[string]any); ok {
			if f, ok := pathOf(m, "trustedCa.filename").(string); ok {
				out["roots"] = f
			}
			out["crl"] = pathOf(m, "crl.filename")
			var names []string
			for _, key := range []string{"matchSubjectAltNames", "matchTypedSubjectAltNames"} {
				ms, _ := m[key].([]any)
				for _, x := range ms {
					if e, ok := x.(map[string]any)["exact"].(string); ok {
						names = append(names, e)
					} else if e, ok := pathOf(x.(map[string]any), "matcher.exact").(string); ok {
						names = append(names, e)
					}
				}
			}
			autoSAN := pathOf(c, "typedExtensionProtocolOptions.envoy\\.extensions\\.upstreams\\.http\\.v3\\.HttpProtocolOptions.upstreamHttpProtocolOptions.autoSanValidation") == true
			if len(names) == 0 && autoSAN {
				// Istio's auto_san_validation: the certificate must
				// name the server name sent; warden checks its fixed
				// server name.
				names = []string{out["sni"].(string)}
			}
			slices.Sort(names)
			out["names"] = names
		}
		return out
	}
	return pathOf(c, f)
}

// pathOf follows a dotted path (\\. for a dot in a key; a number indexes
// a list).
func pathOf(m map[string]any, path string) any {
	var cur any = m
	for _, k := range splitPath(path) {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[k]
		case []any:
			var i int
			if _, err := fmt.Sscan(k, &i); err != nil || i >= len(c) {
				return nil
			}
			cur = c[i]
		default:
			return nil
		}
	}
	return cur
}

func splitPath(p string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '\\' && i+1 < len(p):
			i++
			cur.WriteByte(p[i])
		case p[i] == '.':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(p[i])
		}
	}
	return append(out, cur.String())
}

func jsonObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func jsonField(t *testing.T, b []byte, k string) any { return jsonObject(t, b)[k] }

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func show(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
