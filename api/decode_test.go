package api_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
)

const ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\n"

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	vs := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n"
	cases := []struct{ name, in, want string }{
		{"unknown field", ap + "spec:\n  rules:\n  - from:\n    - source:\n        principalz: [x]\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec.rules[0].from[0].source.principalz: unknown field"},
		{"bad enum", ap + "spec: {action: ALOW}\n",
			`api: document 1 (AuthorizationPolicy default/deny-all): spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"empty enum written", ap + "spec: {action: ''}\n",
			`api: document 1 (AuthorizationPolicy default/deny-all): spec.action: "" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"wrong type", ap + "spec:\n  rules:\n  - to:\n    - operation: {ports: [8080]}\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec.rules[0].to[0].operation.ports[0]: expected a string, got number 8080"},
		{"second document", "---\n" + ap + "spec: {}\n---\n" + strings.Replace(ap, "deny-all", "two", 1) + "spec: {selector: x}\n",
			"api: document 2 (AuthorizationPolicy default/two): spec.selector: expected an object, got string \"x\""},
		{"unknown kind", "apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\nspec: {}\n",
			"api: document 1: unknown kind Sidecar in security.istio.io/v1"},
		{"unknown version", "apiVersion: security.istio.io/v1alpha9\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {}\n",
			"api: document 1: unknown kind PeerAuthentication in security.istio.io/v1alpha9"},
		{"no kind", "apiVersion: security.istio.io/v1\nmetadata: {name: x}\n",
			"api: document 1: apiVersion and kind are required"},
		{"no name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {}\nspec: {}\n",
			"api: document 1 (PeerAuthentication): metadata.name is required"},
		{"no metadata", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n",
			"api: document 1 (PeerAuthentication): metadata.name is required"},
		{"name not a string", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: 7}\n",
			"api: document 1 (PeerAuthentication): metadata.name: expected a string, got number 7"},
		{"invalid name", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: Deny_All}\n",
			`api: document 1 (PeerAuthentication Deny_All): metadata.name: "Deny_All" is not a valid name (lowercase letters, digits, '-' and '.', at most 253 characters)`},
		{"invalid namespace", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: a.b}\n",
			`api: document 1 (PeerAuthentication a.b/p): metadata.namespace: "a.b" is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)`},
		{"bad mode", "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRIKT}}\n",
			`api: document 1 (PeerAuthentication default): spec.mtls.mode: "STRIKT" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`},
		{"bad port key", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {portLevelMtls: {http: {mode: DISABLE}}}\n",
			`api: document 1 (PeerAuthentication p): spec.portLevelMtls["http"]: key is not a port number (1-65535)`},
		{"bad duration", vs + "spec: {http: [{timeout: soon}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].timeout: "soon" is not a duration such as "1.5s" or "100ms"`},
		{"bad regex", vs + "spec: {http: [{match: [{uri: {regex: '/api/(v1'}}]}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].match[0].uri.regex: "/api/(v1" is not an RE2 regular expression: missing closing ): ` + "`/api/(v1`" + ` (RE2 syntax: https://github.com/google/re2/wiki/Syntax)`},
		{"lookahead", vs + "spec: {http: [{match: [{headers: {x-user: {regex: '(?=admin).*'}}}]}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].match[0].headers["x-user"].regex: "(?=admin).*" is not an RE2 regular expression: invalid or unsupported Perl syntax: ` + "`(?=`" + ` (RE2 syntax: https://github.com/google/re2/wiki/Syntax)`},
		{"empty regex", vs + "spec: {http: [{match: [{uri: {regex: ''}}]}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].match[0].uri.regex: an empty regex: write the pattern, or use another match`},
		{"bad rewrite regex", vs + "spec: {http: [{match: [{uri: {prefix: /}}], rewrite: {uriRegexRewrite: {match: '[a-', rewrite: /x}}}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].rewrite.uriRegexRewrite.match: "[a-" is not an RE2 regular expression: missing closing ]: ` + "`[a-`" + ` (RE2 syntax: https://github.com/google/re2/wiki/Syntax)`},
		{"bad cors origin regex", vs + "spec: {http: [{corsPolicy: {allowOrigins: [{regex: '*.example.com'}]}}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].corsPolicy.allowOrigins[0].regex: "*.example.com" is not an RE2 regular expression: missing argument to repetition operator: ` + "`*`" + ` (RE2 syntax: https://github.com/google/re2/wiki/Syntax)`},
		{"bad trigger regex", "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: default}\nspec: {origins: [{jwt: {issuer: i, triggerRules: [{excludedPaths: [{regex: '(('}]}]}}]}\n",
			`api: document 1 (Policy default): spec.origins[0].jwt.triggerRules[0].excludedPaths[0].regex: "((" is not an RE2 regular expression: missing closing ): ` + "`((`" + ` (RE2 syntax: https://github.com/google/re2/wiki/Syntax)`},
		{"negative duration", vs + "spec: {http: [{retries: {perTryTimeout: -1s}}]}\n",
			`api: document 1 (VirtualService v): spec.http[0].retries.perTryTimeout: "-1s" is not a duration such as "1.5s" or "100ms"`},
		{"missing host", "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: d}\nspec: {subsets: [{name: v1}]}\n",
			"api: document 1 (DestinationRule d): spec.host: required field missing"},
		{"null host", "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: null}\n",
			"api: document 1 (DestinationRule d): spec.host: required field missing"},
		{"cluster-scoped with namespace", "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default, namespace: x}\nspec: {}\n",
			"api: document 1 (MeshPolicy x/default): MeshPolicy is cluster-scoped and takes no namespace"},
		{"negative port", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: -1, protocol: HTTP, name: http}, hosts: ['*']}]}\n",
			"api: document 1 (Gateway g): spec.servers[0].port.number: expected a non-negative integer in range, got number -1"},
		{"sidecar host without namespace", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: a}\nspec: {egress: [{hosts: [httpbin.other.svc.cluster.local]}]}\n",
			`api: document 1 (Sidecar a/s): spec.egress[0].hosts[0]: "httpbin.other.svc.cluster.local" is not namespace/host (e.g. "./*", "istio-system/*", "*/api.example.com")`},
		{"sidecar catch-all first", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: a}\nspec: {egress: [{hosts: ['./*']}, {port: {number: 80}, hosts: ['*/*']}]}\n",
			"api: document 1 (Sidecar a/s): spec.egress[1]: the egress listener without a port must be the last one"},
		{"sidecar bad host", "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: a}\nspec: {egress: [{hosts: ['./a*b']}]}\n",
			`api: document 1 (Sidecar a/s): spec.egress[0].hosts[0]: "./a*b": host "a*b" is not *, *.suffix or a host name`},
		{"gateway protocol", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: [{port: {number: 80, protocol: HTTP3, name: http}, hosts: ['*']}]}\n",
			`api: document 1 (Gateway g): spec.servers[0].port.protocol: "HTTP3" is not one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, HTTP_PROXY, TCP, TLS, UDP, MONGO, REDIS, MYSQL (in any case)`},
		{"unquoted ON", "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: ON}\n",
			"api: document 1 (ClusterRbacConfig default): spec.mode: expected a string, got true (YAML reads unquoted on, off, yes and no as booleans: quote the value)"},
		{"duplicate key", ap + "spec:\n  action: DENY\n  action: ALLOW\n",
			`api: document 1: yaml: unmarshal errors: line 6: key "action" already set in map`},
		{"alias and name both", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{issuer: i, jwksUri: 'https://a', jwks_uri: 'https://b'}]}\n",
			"api: document 1 (RequestAuthentication r): spec.jwtRules[0].jwks_uri: duplicate of jwksUri"},
		{"one of", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {jwtRules: [{issuer: i, jwks_uri: 'https://a', jwks: '{}'}]}\n",
			"api: document 1 (RequestAuthentication r): spec.jwtRules[0]: jwksUri and jwks are mutually exclusive"},
		{"one of three", vs + "spec: {http: [{fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE, http2Error: x}}}]}\n",
			"api: document 1 (VirtualService v): spec.http[0].fault.abort: httpStatus, grpcStatus and http2Error are mutually exclusive"},
		{"selector and targetRef", ap + "spec: {selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, name: g}}\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec: selector and targetRef are mutually exclusive"},
		{"wildcard label", ap + "spec: {selector: {matchLabels: {app: 'flask*'}}}\n",
			`api: document 1 (AuthorizationPolicy default/deny-all): spec.selector.matchLabels["app"]: wildcard not allowed in label value match`},
		{"service accounts with principals", ap + "spec: {rules: [{from: [{source: {serviceAccounts: [default/sleep], principals: [x]}}]}]}\n",
			"api: document 1 (AuthorizationPolicy default/deny-all): spec.rules[0].from[0].source: cannot set serviceAccounts with namespaces or principals"},
		{"percentage", vs + "spec: {http: [{mirrorPercentage: {value: 101}}]}\n",
			"api: document 1 (VirtualService v): spec.http[0].mirrorPercentage.value: 101 is not a percentage between 0 and 100"},
		{"body bytes", vs + "spec: {http: [{directResponse: {status: 200, body: {bytes: '%%'}}}]}\n",
			"api: document 1 (VirtualService v): spec.http[0].directResponse.body.bytes: not base64: illegal base64 data at input byte 0"},
		{"null in a list", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec:\n  servers:\n  -",
			"api: document 1 (Gateway a): spec.servers[0]: null is not allowed here"},
		{"null in a map", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec: {selector: {app: null}}\n",
			`api: document 1 (Gateway a): spec.selector["app"]: null is not allowed here`},
		{"items not a list", `{"apiVersion":"v1","kind":"List","items":{}}`,
			"api: document 1: items: expected a list, got an object"},
		{"error inside a list", `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"networking.istio.io/v1","kind":"Gateway","metadata":{"name":"g"},"spec":{"servers":3}}]}`,
			"api: document 1 items[0] (Gateway g): spec.servers: expected a list, got number 3"},
		{"not YAML", "a: [\n", "api: document 1: yaml: line 1: did not find expected node content"},
		{"scalar document", "hello\n", "api: document 1: expected an object, got string \"hello\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			objs, err := api.Decode([]byte(tc.in))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v (objects %d)\nwant  %s", err, len(objs), tc.want)
			}
		})
	}
}

// TestDecodeAllGoesOn: every invalid document and List item is an error
// of its own, and the valid objects around them are kept.
func TestDecodeAllGoesOn(t *testing.T) {
	t.Parallel()
	in := ap + "spec: {action: ALOW}\n---\nnot: [valid\n---\n" + strings.Replace(ap, "deny-all", "good", 1) + "spec: {}\n---\n" +
		`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"p"},"spec":{"mtls":{"mode":"STRICTEST"}}},` +
		`{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"q"},"spec":{}}]}`
	objs, errs := api.DecodeAll([]byte(in))
	var names []string
	for _, o := range objs {
		names = append(names, o.Meta().Name)
	}
	var got []string
	for _, err := range errs {
		got = append(got, err.Error())
	}
	want := []string{
		`api: document 1 (AuthorizationPolicy default/deny-all): spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`,
		"api: document 2: yaml: line 2: did not find expected ',' or ']'",
		`api: document 4 items[0] (PeerAuthentication p): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`,
	}
	if strings.Join(names, ",") != "good,q" || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("objects %v, errors:\n%s\nwant objects good,q, errors:\n%s", names, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := api.Decode([]byte(in)); err == nil || err.Error() != want[0] {
		t.Fatalf("Decode: %v, want the first error", err)
	}
}

// TestDecodeObject: one object (an admission request's), its errors
// naming the object and field without a document number.
func TestDecodeObject(t *testing.T) {
	t.Parallel()
	o, err := api.DecodeObject([]byte(`{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"p","namespace":"shop"},"spec":{"mtls":{"mode":"STRICT"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if pa, ok := o.(*api.PeerAuthentication); !ok || pa.Spec.MTLS == nil || pa.Spec.MTLS.Mode != "STRICT" || pa.Metadata.Namespace != "shop" {
		t.Fatalf("decoded %#v", o)
	}
	for _, c := range []struct{ in, want string }{
		{ap + "spec: {action: ALOW}\n", `api: AuthorizationPolicy default/deny-all: spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {}\n", "api: PeerAuthentication: metadata.name is required"},
		{"apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\n", "api: object: unknown kind Sidecar in security.istio.io/v1"},
		{"[1]", "api: object: expected an object, got a list"},
		{`{"apiVersion":"v1","kind":"List","items":[]}`, "api: a List, not one object"},
		{"{", "api: yaml: line 1: did not find expected node content"},
		{"", "api: no object"},
	} {
		if _, err := api.DecodeObject([]byte(c.in)); err == nil || err.Error() != c.want {
			t.Errorf("DecodeObject(%q): %v, want %s", c.in, err, c.want)
		}
	}
}

func TestDecodeAcceptsAPIServerFieldsAndLists(t *testing.T) {
	t.Parallel()
	in := `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule",
"metadata":{"name":"flaskapp","namespace":"default","uid":"1234","resourceVersion":"9","managedFields":[{"manager":"kubectl"}]},
"spec":{"host":"flaskapp","subsets":[{"name":"v1","labels":{"version":"v1"}}]},
"status":{"observedGeneration":1,"validationMessages":[{"type":{"code":"IST0101"}}]}}]}`
	objs, err := api.Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	dr, ok := objs[0].(*api.DestinationRule)
	if !ok || dr.Spec.Host != "flaskapp" || dr.Spec.Subsets[0].Labels["version"] != "v1" || dr.Meta().Namespace != "default" {
		t.Fatalf("decoded %#v", objs[0])
	}
}

// TestDecodeNullMTLS: `- mtls:` is how Istio's documentation turned
// mutual TLS on; it must not read as "no mTLS method".
func TestDecodeNullMTLS(t *testing.T) {
	t.Parallel()
	for _, peers := range []string{"  - mtls:\n", "  - mtls: null\n", "  - mtls: {}\n"} {
		in := "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\nspec:\n  peers:\n" + peers
		objs, err := api.Decode([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if p := objs[0].(*api.MeshPolicy).Spec.Peers[0]; p.MTLS == nil || *p.MTLS != (api.MutualTLS{}) || p.JWT != nil {
			t.Errorf("%q: peers[0] = %+v", peers, p)
		}
	}
}

// TestDecodeIstioFields decodes fields from Istio's reference pages into
// the right places, including the ones where Go needs care: aliases,
// wrapper types (0 is not unset), maps of matches and uint32 map values.
func TestDecodeIstioFields(t *testing.T) {
	t.Parallel()
	in := `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
      queryParams: {v: {regex: "^2$"}}
    mirror_percent: 0
    mirrors: [{destination: {host: mirror, port: {number: 9080}}, percentage: {value: 12.5}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryRemoteLocalities: false}
    corsPolicy: {allowOrigins: [{prefix: "https://"}], allowCredentials: false, unmatchedPreflights: FORWARD}
    directResponse: {status: 503, body: {bytes: aGVsbG8=}}
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: a}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 1024}}
      localityLbSetting: {distribute: [{from: us-west/*, to: {"us-west/*": 80, "us-east/*": 20}}]}
    outlierDetection: {consecutive5xxErrors: 0, interval: 1m}
    tunnel: {targetHost: proxy, targetPort: 8443}
`
	objs, err := api.Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	vs := objs[0].(*api.VirtualService)
	h := vs.Spec.HTTP[0]
	if h.Match[0].Headers["end-user"].Exact != "jason" || h.Match[0].QueryParams["v"].Regex != "^2$" {
		t.Errorf("match = %+v", h.Match[0])
	}
	if h.MirrorPercent == nil || *h.MirrorPercent != 0 || h.Mirrors[0].Percentage.Value != 12.5 || h.Mirrors[0].Destination.Port.Number != 9080 {
		t.Errorf("mirror = %v %+v", h.MirrorPercent, h.Mirrors)
	}
	if r := h.Retries; r.RetryRemoteLocalities == nil || *r.RetryRemoteLocalities || r.RetryIgnorePreviousHosts != nil {
		t.Errorf("retries = %+v", r)
	}
	if h.CorsPolicy.AllowCredentials == nil || h.CorsPolicy.AllowOrigins[0].Prefix != "https://" || h.DirectResponse.Body.Bytes != "aGVsbG8=" {
		t.Errorf("cors, directResponse = %+v %+v", h.CorsPolicy, h.DirectResponse)
	}
	if vs.Type().APIVersion != "networking.istio.io/v1beta1" || vs.Spec.TLS[0].Match[0].SniHosts[0] != "a.example.com" {
		t.Errorf("vs = %+v", vs)
	}
	tp := objs[1].(*api.DestinationRule).Spec.TrafficPolicy
	if lb := tp.LoadBalancer; lb.ConsistentHash.HTTPCookie.TTL != "0s" || lb.ConsistentHash.RingHash.MinimumRingSize != 1024 ||
		!reflect.DeepEqual(lb.LocalityLbSetting.Distribute[0].To, map[string]uint32{"us-west/*": 80, "us-east/*": 20}) {
		t.Errorf("loadBalancer = %+v", lb)
	}
	if od := tp.OutlierDetection; od.Consecutive5xxErrors == nil || *od.Consecutive5xxErrors != 0 || od.Interval != "1m" {
		t.Errorf("outlierDetection = %+v", od)
	}
	if tp.Tunnel.TargetPort != 8443 {
		t.Errorf("tunnel = %+v", tp.Tunnel)
	}
}

// FuzzDecode: any input decodes or fails with an "api:" error, never a
// panic; what decodes is valid, and encodes to JSON that decodes to the
// same objects. Seeds: testdata/fuzz/FuzzDecode and the examples.
func FuzzDecode(f *testing.F) {
	for _, b := range examples(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := api.Decode(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "api: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		for _, o := range objs {
			if err := o.Validate(); err != nil {
				t.Fatalf("decoded an invalid object: %v", err)
			}
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			again, err := api.Decode(b)
			if err != nil {
				t.Fatalf("re-decoding %s: %v", b, err)
			}
			// Compared as JSON: an empty list and an absent one are the same.
			if b2, _ := json.Marshal(again[0]); len(again) != 1 || !bytes.Equal(b, b2) {
				t.Fatalf("round trip changed the object:\n%s\n%s", b, b2)
			}
		}
	})
}
