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

// Every field of Sidecar, Gateway and ServiceEntry is accounted for: set
// on its own to a valid value, it changes the proxy's configuration or a
// new report names it (or the field holding it). A field added to api
// without compiler support fails here.

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
}

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
		t.Fatalf("no sample for %s.%s: add one, and make the compiler read the field or report it", l.Owner.Name(), l.Name)
	}
	v := reflect.ValueOf(s)
	if !v.Type().AssignableTo(l.Type) {
		t.Fatalf("sample for %s.%s is %T, field is %s", l.Owner.Name(), l.Name, s, l.Type)
	}
	return v
}

func renderProxy(t *testing.T, objs []api.Object, node string) (string, []string) {
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
		t.Fatal(err)
	}
	var b strings.Builder
	for _, set := range [][]proto.Message{msgs(cfg.Listeners), msgs(cfg.Routes), msgs(cfg.Clusters), msgs(cfg.Endpoints)} {
		for _, m := range set {
			j, _ := protojson.Marshal(m)
			b.Write(j)
		}
	}
	return b.String(), cfg.Reports
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
	n := 0
	st := reflect.TypeOf(spec).Elem()
	baseY, baseR := renderProxy(t, build(spec), node)
	for _, l := range fieldwalk.Leaves(st) {
		if xdsExempt[kind+"."+l.Path] != "" {
			continue
		}
		n++
		val := xdsSample(t, l)
		c := reflect.New(st)
		b, _ := json.Marshal(spec)
		_ = json.Unmarshal(b, c.Interface())
		l.Set(c.Elem(), val)
		y, reports := renderProxy(t, build(c.Interface()), node)
		if y != baseY || namesField(reports, baseR, l.Path) {
			continue
		}
		t.Errorf("%s spec.%s: set to %v, neither the configuration nor a report changed", kind, l.Path, val)
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
	if n < 117 {
		t.Fatalf("only %d fields walked", n)
	}
	t.Logf("%d fields walked", n)
}
