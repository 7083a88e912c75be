package xds_test

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/xds"
)

// TestParseNodeMetadata: GENERATOR picks the client kind (others are
// refused by name); ISTIO_VERSION is kept for metrics only when it looks
// like a release, since a client chooses it and it becomes a label.
func TestParseNodeMetadata(t *testing.T) {
	const id = "sidecar~10.0.0.1~sleep.default~default.svc.cluster.local"
	node := func(md map[string]string) *corev3.Node {
		f := map[string]*structpb.Value{}
		for k, v := range md {
			f[k] = structpb.NewStringValue(v)
		}
		return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: f}}
	}
	for _, c := range []struct {
		md                 map[string]string
		generator, version string
		transparent        bool
		err                string
	}{
		{md: nil, generator: xds.GeneratorEnvoy},
		{md: map[string]string{"GENERATOR": "grpc", "ISTIO_VERSION": "1.24.2"}, generator: xds.GeneratorGRPC, version: "1.24.2"},
		{md: map[string]string{"ISTIO_VERSION": "1.25.0-alpha.0+build_7"}, generator: xds.GeneratorEnvoy, version: "1.25.0-alpha.0+build_7"},
		{md: map[string]string{"ISTIO_VERSION": "1.24\n2"}, generator: xds.GeneratorEnvoy},
		{md: map[string]string{"ISTIO_VERSION": `1"} 9`}, generator: xds.GeneratorEnvoy},
		{md: map[string]string{"ISTIO_VERSION": strings.Repeat("9", 65)}, generator: xds.GeneratorEnvoy},
		{md: map[string]string{"GENERATOR": "ztunnel"}, err: `metadata GENERATOR "ztunnel" is not "envoy" or "grpc"`},
		{md: map[string]string{"INTERCEPTION_MODE": "REDIRECT"}, generator: xds.GeneratorEnvoy},
		{md: map[string]string{"INTERCEPTION_MODE": "TPROXY"}, generator: xds.GeneratorEnvoy, transparent: true},
		{md: map[string]string{"INTERCEPTION_MODE": "NONE"}, err: `metadata INTERCEPTION_MODE "NONE" (a sidecar without iptables) is not served`},
		{md: map[string]string{"INTERCEPTION_MODE": "tproxy"}, err: `metadata INTERCEPTION_MODE "tproxy" is not REDIRECT or TPROXY`},
		// Proxyless gRPC: nothing is intercepted; the mode changes nothing.
		{md: map[string]string{"GENERATOR": "grpc", "INTERCEPTION_MODE": "NONE"}, generator: xds.GeneratorGRPC},
		{md: map[string]string{"GENERATOR": "grpc", "INTERCEPTION_MODE": "TPROXY"}, generator: xds.GeneratorGRPC},
	} {
		p, err := xds.ParseNode(node(c.md))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: error %v, want %q", c.md, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", c.md, err)
		}
		if p.Generator != c.generator || p.IstioVersion != c.version || p.Transparent != c.transparent {
			t.Errorf("%v: generator %q, version %q, transparent %v; want %q, %q, %v", c.md, p.Generator, p.IstioVersion, p.Transparent, c.generator, c.version, c.transparent)
		}
	}
	// A gateway binds its own ports: its mode changes nothing either.
	gw := &corev3.Node{Id: "router~10.0.0.9~ingress.istio-system~istio-system.svc.cluster.local",
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"INTERCEPTION_MODE": structpb.NewStringValue("NONE")}}}
	if p, err := xds.ParseNode(gw); err != nil || p.Transparent {
		t.Errorf("gateway with INTERCEPTION_MODE NONE: %v, transparent %v", err, p != nil && p.Transparent)
	}
}
