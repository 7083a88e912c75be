package xds_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/fieldwalk"
	"github.com/wardenmesh/warden/xds"
)

// Every field of Sidecar, Gateway, ServiceEntry, DestinationRule and
// VirtualService is accounted for: set on its own to a valid value, it
// changes the proxy's configuration (against the same spec with the field
// as in the base, the structs holding it allocated in both) or a new
// report names it (or the field holding it). A field added to api without
// compiler support fails here.

var xdsSamples = map[string]any{
	"labels": map[string]string{"app": "other"}, "selector": map[string]string{"istio": "other"},
	"number": uint32(8443), "protocol": "HTTP", "name": "other", "targetPort": uint32(9443),
	"bind": "127.0.0.1", "captureMode": "NONE", "defaultEndpoint": "127.0.0.1:8080",
	"IstioEgressListener.hosts": []string{"*/*"}, "Server.hosts": []string{"b.example.com"},
	"httpsRedirect": true, "mode": "MUTUAL", "serverCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem",
	"caCertificates": "/etc/certs/ca.pem", "caCrl": "/etc/certs/crl.pem", "credentialName": "other-cert",
	"credentialNames": []string{"a", "b"}, "caCertCredentialName": "ca", "subjectAltNames": []string{"client.example.com"},
	"verifyCertificateSpki": []string{"abc"}, "verifyCertificateHash": []string{"ab:cd"},
	"minProtocolVersion": "TLSV1_3", "maxProtocolVersion": "TLSV1_2", "cipherSuites": []string{"ECDHE-ECDSA-AES128-GCM-SHA256"},
	"insecureSkipVerify": ptrBool(true),
	"maxConnections":     int32(10), "connectTimeout": "1s", "probes": uint32(3), "time": "10s", "interval": "5s",
	"maxConnectionDuration": "1h", "idleTimeout": "1m", "http1MaxPendingRequests": int32(10), "http2MaxRequests": int32(10),
	"maxRequestsPerConnection": int32(1), "maxRetries": int32(1), "h2UpgradePolicy": "UPGRADE", "useClientProtocol": true,
	"maxConcurrentStreams": int32(10), "timeout": "1s",
	"OutboundTrafficPolicy.mode": "ALLOW_ANY", "host": "egress.example.com", "subset": "v1",
	"ServiceEntrySpec.hosts": []string{"other.example.com"}, "addresses": []string{"240.0.0.9"}, "ServicePort.protocol": "TCP",
	"location": "MESH_EXTERNAL", "resolution": "DNS", "address": "10.0.5.2", "WorkloadEntry.ports": map[string]uint32{"http": 9443},
	"network": "n2", "locality": "us/east", "weight": uint32(5), "serviceAccount": "other", "exportTo": []string{"other"},

	// DestinationRule.
	"matchLabels": map[string]string{"app": "sleep"}, "simple": "LEAST_REQUEST", "httpHeaderName": "x-user",
	"HTTPCookie.name": "session", "path": "/api", "ttl": "10s", "CookieAttribute.name": "SameSite", "CookieAttribute.value": "Strict",
	"useSourceIp": true, "httpQueryParameterName": "user", "minimumRingSize": uint64(2048), "tableSize": uint64(65537),
	"from": "us-east/zone-a/*", "LocalityDistribute.to": map[string]uint32{"us-west/*": 100}, "LocalityFailover.from": "us-east", "LocalityFailover.to": "us-west",
	"failoverPriority": []string{"topology.kubernetes.io/region"}, "enabled": ptrBool(true), "minClusterSize": ptrUint32(3),
	"warmupDurationSecs": "10s", "duration": "10s", "minimumPercent": ptrFloat(10), "aggression": ptrFloat(2),
	"splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": ptrUint32(5), "consecutiveGatewayErrors": ptrUint32(5),
	"consecutive5xxErrors": ptrUint32(5), "consecutiveErrors": int32(5), "baseEjectionTime": "30s", "maxEjectionPercent": int32(50),
	"minHealthPercent": int32(50), "outlierDetectionHttpErrorCodes": []uint32{503},
	"ClientTLSSettings.mode": "SIMPLE", "clientCertificate": "/etc/certs/client.pem", "sni": "other.example.com",
	"TunnelSettings.protocol": "POST", "targetHost": "api.internal", "version": "V2",
	"RetryBudget.percent": ptrFloat(25), "minRetryConcurrency": uint32(5), "budgetInterval": "10s",

	// VirtualService.
	"VirtualServiceSpec.hosts": []string{"other.example.com"}, "gateways": []string{"istio-system/other"},
	"exact": "/exact", "prefix": "/prefix", "regex": "^/re.*", "HTTPMatchRequest.headers": map[string]api.StringMatch{"x-user": {Exact: "a"}},
	"queryParams": map[string]api.StringMatch{"user": {Exact: "a"}}, "withoutHeaders": map[string]api.StringMatch{"x-test": {}},
	"port": uint32(8443), "sourceLabels": map[string]string{"app": "sleep"}, "ignoreUriCase": true, "sourceNamespace": "other",
	"statPrefix": "api", "HTTPRouteDestination.weight": int32(30), "RouteDestination.weight": int32(30),
	"set": map[string]string{"x-set": "1"}, "add": map[string]string{"x-add": "1"}, "remove": []string{"x-remove"},
	"uri": "/v2", "authority": "other.example.com", "derivePort": "FROM_REQUEST_PORT", "scheme": "https", "redirectCode": uint32(302),
	"prefixRewrite": "/p", "status": uint32(503), "string": "down", "bytes": "ZG93bg==", "namespace": "other",
	"match": "^/a", "rewrite": "/b", "attempts": int32(3), "perTryTimeout": "2s", "retryOn": "5xx",
	"retryRemoteLocalities": ptrBool(true), "retryIgnorePreviousHosts": ptrBool(false), "backoff": "100ms",
	"fixedDelay": "2s", "exponentialDelay": "2s", "value": float64(50), "FaultDelay.percent": int32(50),
	"httpStatus": int32(503), "grpcStatus": "UNAVAILABLE", "http2Error": "ENHANCE_YOUR_CALM", "mirrorPercent": ptrUint32(50),
	"allowOrigin": []string{"https://a.example.com"}, "allowMethods": []string{"GET"}, "allowHeaders": []string{"x-a"},
	"exposeHeaders": []string{"x-b"}, "maxAge": "1h", "allowCredentials": ptrBool(true), "unmatchedPreflights": "IGNORE",
	"sniHosts": []string{"other.example.com"}, "destinationSubnets": []string{"10.9.0.0/16"}, "sourceSubnet": "10.0.0.0/8",
}

func ptrUint32(n uint32) *uint32  { return &n }
func ptrFloat(f float64) *float64 { return &f }

func ptrBool(b bool) *bool { return &b }

// xdsExempt lists fields whose effect is nil by design, with the reason.
var xdsExempt = map[string]string{
	"Gateway.servers.name": "a server's name labels it for stats only; Istio's configuration does not use it either",
}

func xdsSample(t *testing.T, l fieldwalk.Leaf) reflect.Value {
	t.Helper()
	s, ok := xdsSamples[l.Owner.Name()+"."+l.Name]
	if !ok {
		s, ok = xdsSamples[l.Name]
	}
	if !ok {
		t.Errorf("no sample for %s.%s: add one, and make the compiler read the field or report it", l.Owner.Name(), l.Name)
		return reflect.Value{}
	}
	v := reflect.ValueOf(s)
	if !v.Type().AssignableTo(l.Type) {
		t.Fatalf("sample for %s.%s is %T, field is %s", l.Owner.Name(), l.Name, s, l.Type)
	}
	return v
}

func renderProxy(t *testing.T, objs []api.Object, node string) (string, []string, error) {
	t.Helper()
	services := []*xds.Service{
		{Host: "sleep.default.svc.cluster.local", Name: "sleep", Namespace: "default", Ports: []xds.ServicePort{{Number: 80, Name: "http"}},
			Endpoints: []xds.Endpoint{{Address: "10.0.0.4", Labels: map[string]string{"app": "sleep"}, ServiceAccount: "sleep"}}},
		{Host: "web.other.svc.cluster.local", Name: "web", Namespace: "other", Ports: []xds.ServicePort{{Number: 80, Name: "http"}},
			Endpoints: []xds.Endpoint{{Address: "10.0.1.4", ServiceAccount: "web"}}},
		{Host: "gw.istio-system.svc.cluster.local", Name: "gw", Namespace: "istio-system", Ports: []xds.ServicePort{{Number: 443, Name: "https"}},
			Endpoints: []xds.Endpoint{{Address: "10.0.9.1", Labels: map[string]string{"istio": "ingressgateway"}, ServiceAccount: "gw"}}},
	}
	entries, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	services = append(services, entries...)
	mesh, err := xds.NewMesh(objs, services, xds.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := xds.ParseNodeID(node)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := mesh.ProxyConfig(p, nil)
	if err != nil {
		return "", nil, err
	}
	var b strings.Builder
	for _, set := range [][]proto.Message{msgs(cfg.Listeners), msgs(cfg.Routes), msgs(cfg.Clusters), msgs(cfg.Endpoints)} {
		for _, m := range set {
			j, _ := protojson.Marshal(m)
			b.Write(j)
		}
	}
	return b.String(), cfg.Reports, nil
}

func msgs[T any](rs []T) []proto.Message {
	var out []proto.Message
	for _, r := range rs {
		out = append(out, any(r).(proto.Message))
	}
	return out
}

func accountXDSFields(t *testing.T, kind string, spec any, build func(spec any) []api.Object, node string) int {
	t.Helper()
	return accountXDSFieldsWhere(t, kind, spec, build, node, nil)
}

// accountXDSFieldsWhere walks the leaves whose path only accepts (nil:
// all).
func accountXDSFieldsWhere(t *testing.T, kind string, spec any, build func(spec any) []api.Object, node string, only func(path string) bool) int {
	t.Helper()
	n := 0
	st := reflect.TypeOf(spec).Elem()
	_, baseR, err := renderProxy(t, build(spec), node)
	if err != nil {
		t.Fatalf("%s: the base configuration: %v", kind, err)
	}
	for _, l := range fieldwalk.Leaves(st) {
		if xdsExempt[kind+"."+l.Path] != "" || only != nil && !only(l.Path) {
			continue
		}
		n++
		val := xdsSample(t, l)
		if !val.IsValid() {
			continue
		}
		// The field set, against the same spec with the field as in the
		// base (zero where the base has no struct holding it): the
		// structs holding it exist in both, so a field that is read
		// only for its parent's presence (a dropped field whose parent
		// still compiles to something) shows.
		render := func(v reflect.Value) (string, []string, error) {
			c := reflect.New(st)
			b, _ := json.Marshal(spec)
			_ = json.Unmarshal(b, c.Interface())
			l.Set(c.Elem(), v)
			return renderProxy(t, build(c.Interface()), node)
		}
		was, ok := l.Get(reflect.ValueOf(spec).Elem())
		if !ok {
			was = reflect.Zero(l.Type)
		}
		zeroY, _, zeroErr := render(was)
		if zeroErr != nil {
			zeroY = "invalid: " + zeroErr.Error()
		}
		y, reports, err := render(val)
		if err != nil {
			t.Errorf("%s spec.%s: set to %v, the configuration is invalid: %v", kind, l.Path, fmtSample(val), err)
			continue
		}
		if y != zeroY || namesField(reports, baseR, l.Path) {
			continue
		}
		t.Errorf("%s spec.%s: set to %v, neither the configuration nor a report changed", kind, l.Path, fmtSample(val))
	}
	return n
}

// namesField: a report not in base names the field or one holding it.
func namesField(reports, base []string, path string) bool {
	for _, r := range reports {
		if slices.Contains(base, r) {
			continue
		}
		for _, seg := range strings.Split(path, ".") {
			if strings.Contains(r, seg) {
				return true
			}
		}
	}
	return false
}

func TestEverySidecarAndGatewayFieldIsAccounted(t *testing.T) {
	sidecar := &api.SidecarSpec{Egress: []api.IstioEgressListener{{Hosts: []string{"./*"}}}}
	n := accountXDSFields(t, "Sidecar", sidecar, func(spec any) []api.Object {
		return []api.Object{&api.Sidecar{Metadata: api.ObjectMeta{Name: "s", Namespace: "default"}, Spec: *spec.(*api.SidecarSpec)}}
	}, "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local")

	gateway := &api.GatewaySpec{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []api.Server{{
		Port: api.GatewayPort{Number: 443, Name: "https", Protocol: "HTTPS"}, Hosts: []string{"a.example.com"},
		TLS: &api.ServerTLSSettings{Mode: "SIMPLE", CredentialName: "a-cert"}}}}
	n += accountXDSFields(t, "Gateway", gateway, func(spec any) []api.Object {
		return []api.Object{
			&api.Gateway{Metadata: api.ObjectMeta{Name: "g", Namespace: "istio-system"}, Spec: *spec.(*api.GatewaySpec)},
			&api.VirtualService{Metadata: api.ObjectMeta{Name: "v", Namespace: "istio-system"}, Spec: api.VirtualServiceSpec{
				Hosts: []string{"a.example.com", "b.example.com"}, Gateways: []string{"g"},
				HTTP: []api.HTTPRoute{{Route: []api.HTTPRouteDestination{{Destination: api.Destination{Host: "sleep.default.svc.cluster.local"}}}}},
				TCP:  []api.TCPRoute{{Route: []api.RouteDestination{{Destination: api.Destination{Host: "sleep.default.svc.cluster.local", Port: &api.PortSelector{Number: 80}}}}}},
			}},
		}
	}, "router~10.0.9.1~gw-1.istio-system~istio-system.svc.cluster.local")

	// A ServiceEntry the sleep sidecar calls, with a DestinationRule
	// subset its endpoint's labels select.
	entry := &api.ServiceEntrySpec{Hosts: []string{"ext.example.com"}, Location: "MESH_INTERNAL", Resolution: "STATIC",
		Ports:     []api.ServicePort{{Number: 443, Name: "http"}},
		Endpoints: []api.WorkloadEntry{{Address: "10.0.5.1", Labels: map[string]string{"app": "ext"}, ServiceAccount: "ext"}}}
	n += accountXDSFields(t, "ServiceEntry", entry, func(spec any) []api.Object {
		return []api.Object{
			&api.ServiceEntry{Metadata: api.ObjectMeta{Name: "ext", Namespace: "default"}, Spec: *spec.(*api.ServiceEntrySpec)},
			&api.DestinationRule{Metadata: api.ObjectMeta{Name: "ext", Namespace: "default"}, Spec: api.DestinationRuleSpec{
				Host: "ext.example.com", Subsets: []api.Subset{{Name: "v1", Labels: map[string]string{"app": "ext"}}}}},
		}
	}, "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local")

	// A DestinationRule for a ServiceEntry the sleep sidecar calls on two
	// HTTP ports, with a subset a VirtualService routes to: each policy
	// (top level, port level, the subset's and its port level) takes
	// effect on some cluster or route, and a port-level setting already
	// present lets its port be moved.
	n += accountXDSFields(t, "DestinationRule", destinationRuleBase(), func(spec any) []api.Object {
		return append(destinationRuleWorld(),
			&api.DestinationRule{Metadata: api.ObjectMeta{Name: "api", Namespace: "default"}, Spec: *spec.(*api.DestinationRuleSpec)})
	}, "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local")
	// Again with every tls block in mode SIMPLE, for the fields SIMPLE
	// uses (above, a tls block has no mode: each field is reported).
	n += accountXDSFieldsWhere(t, "DestinationRule", destinationRuleTLS(), func(spec any) []api.Object {
		return append(destinationRuleWorld(),
			&api.DestinationRule{Metadata: api.ObjectMeta{Name: "api", Namespace: "default"}, Spec: *spec.(*api.DestinationRuleSpec)})
	}, "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local", func(path string) bool {
		return strings.Contains(path, "tls.") && !strings.HasSuffix(path, "tls.mode")
	})

	// A VirtualService for api.example.com at the sleep sidecar (its tcp
	// and tls rules too), then one bound to the ingress gateway with
	// HTTP, TCP and TLS passthrough servers.
	n += accountXDSFields(t, "VirtualService", virtualServiceBase(nil), func(spec any) []api.Object {
		return append(destinationRuleWorld()[:1], virtualServiceWorld(spec.(*api.VirtualServiceSpec), "default")...)
	}, "sidecar~10.0.0.4~sleep.default~default.svc.cluster.local")
	n += accountXDSFields(t, "VirtualService", virtualServiceBase([]string{"g"}), func(spec any) []api.Object {
		return append(destinationRuleWorld()[:1], append(virtualServiceWorld(spec.(*api.VirtualServiceSpec), "istio-system"),
			&api.Gateway{Metadata: api.ObjectMeta{Name: "g", Namespace: "istio-system"}, Spec: api.GatewaySpec{
				Selector: map[string]string{"istio": "ingressgateway"}, Servers: []api.Server{
					{Port: api.GatewayPort{Number: 80, Name: "http", Protocol: "HTTP"}, Hosts: []string{"*"}},
					{Port: api.GatewayPort{Number: 9000, Name: "tcp", Protocol: "TCP"}, Hosts: []string{"*"}},
					{Port: api.GatewayPort{Number: 443, Name: "tls", Protocol: "TLS"}, Hosts: []string{"*"}, TLS: &api.ServerTLSSettings{Mode: "PASSTHROUGH"}},
				}}})...)
	}, "router~10.0.9.1~gw-1.istio-system~istio-system.svc.cluster.local")
	if n < 640 {
		t.Fatalf("only %d fields walked", n)
	}
	t.Logf("%d fields walked", n)
}

func destinationRuleBase() *api.DestinationRuleSpec {
	port80 := func() []api.PortTrafficPolicy {
		return []api.PortTrafficPolicy{{Port: &api.PortSelector{Number: 80}, LoadBalancer: &api.LoadBalancerSettings{Simple: "RANDOM"}}}
	}
	return &api.DestinationRuleSpec{Host: "api.example.com",
		TrafficPolicy: &api.TrafficPolicy{PortLevelSettings: port80()},
		Subsets: []api.Subset{{Name: "v1", Labels: map[string]string{"app": "api"},
			TrafficPolicy: &api.TrafficPolicy{PortLevelSettings: port80()}}}}
}

// destinationRuleTLS is destinationRuleBase with each policy (top
// level, port 80, the subset's and its port 80) in tls mode SIMPLE.
func destinationRuleTLS() *api.DestinationRuleSpec {
	dr := destinationRuleBase()
	simple := func() *api.ClientTLSSettings { return &api.ClientTLSSettings{Mode: "SIMPLE"} }
	for _, tp := range []*api.TrafficPolicy{dr.TrafficPolicy, dr.Subsets[0].TrafficPolicy} {
		tp.TLS = simple()
		tp.PortLevelSettings[0].TLS = simple()
	}
	return dr
}

// destinationRuleWorld: api.example.com, in the mesh, on ports 80 and
// 8443 (protocol HTTP declared: an undeclared port already uses the
// client's protocol, as Istio's sniffed ports, and useClientProtocol
// would change nothing there), and a VirtualService splitting its calls between the service and
// subset v1 (each destination's hash policy reaches the route).
func destinationRuleWorld() []api.Object {
	return []api.Object{
		&api.ServiceEntry{Metadata: api.ObjectMeta{Name: "api", Namespace: "default"}, Spec: api.ServiceEntrySpec{
			Hosts: []string{"api.example.com"}, Location: "MESH_INTERNAL", Resolution: "STATIC",
			Ports:     []api.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}, {Number: 8443, Name: "http-alt", Protocol: "HTTP"}},
			Endpoints: []api.WorkloadEntry{{Address: "10.0.6.1", Labels: map[string]string{"app": "api"}, ServiceAccount: "api"}}}},
		&api.VirtualService{Metadata: api.ObjectMeta{Name: "api", Namespace: "default"}, Spec: api.VirtualServiceSpec{
			Hosts: []string{"api.example.com"},
			HTTP: []api.HTTPRoute{{Route: []api.HTTPRouteDestination{
				{Destination: api.Destination{Host: "api.example.com"}, Weight: 50},
				{Destination: api.Destination{Host: "api.example.com", Subset: "v1"}, Weight: 50}}}},
		}},
	}
}

// fmtSample shows a sample, a pointer by what it points to.
func fmtSample(v reflect.Value) any {
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface()
	}
	return v.Interface()
}

// virtualServiceBase routes api.example.com over HTTP (split between the
// service and subset v1, with retries) and, with gateways, over TCP and
// TLS as well (a sidecar builds no tcp or tls routes: each such field is
// walked from nothing, and reported).
func virtualServiceBase(gateways []string) *api.VirtualServiceSpec {
	to := api.Destination{Host: "api.example.com", Port: &api.PortSelector{Number: 80}}
	v1 := api.Destination{Host: "api.example.com", Subset: "v1", Port: &api.PortSelector{Number: 80}}
	spec := &api.VirtualServiceSpec{Hosts: []string{"api.example.com"}, Gateways: gateways,
		HTTP: []api.HTTPRoute{{Route: []api.HTTPRouteDestination{{Destination: to, Weight: 50}, {Destination: v1, Weight: 50}},
			Retries: &api.HTTPRetry{Attempts: 2}}}}
	if gateways != nil {
		split := []api.RouteDestination{{Destination: to, Weight: 50}, {Destination: v1, Weight: 50}}
		spec.TCP = []api.TCPRoute{{Match: []api.L4MatchAttributes{{Port: 9000}}, Route: split}}
		spec.TLS = []api.TLSRoute{{Match: []api.TLSMatchAttributes{{SniHosts: []string{"api.example.com"}, Port: 443}}, Route: split}}
	}
	return spec
}

// virtualServiceWorld: the VirtualService in ns, and a DestinationRule
// defining subset v1 of api.example.com.
func virtualServiceWorld(spec *api.VirtualServiceSpec, ns string) []api.Object {
	return []api.Object{
		&api.VirtualService{Metadata: api.ObjectMeta{Name: "api", Namespace: ns}, Spec: *spec},
		&api.DestinationRule{Metadata: api.ObjectMeta{Name: "api", Namespace: "default"}, Spec: api.DestinationRuleSpec{
			Host: "api.example.com", Subsets: []api.Subset{{Name: "v1", Labels: map[string]string{"app": "api"}}}}},
	}
}
