package sds_test

import (
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/sds"
)

// TestEnvoyBootstrapExample keeps docs/envoy/sidecar-bootstrap.yaml a
// valid Envoy v3 bootstrap that asks warden for "default" and "ROOTCA".
func TestEnvoyBootstrapExample(t *testing.T) {
	t.Parallel()
	y, err := os.ReadFile("../docs/envoy/sidecar-bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		t.Fatalf("not an Envoy v3 bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	ts := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetTransportSocket()
	var dtc tlsv3.DownstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&dtc); err != nil {
		t.Fatalf("transport socket: %v", err)
	}
	if err := dtc.ValidateAll(); err != nil { // ValidateAll does not descend into Any
		t.Fatalf("DownstreamTlsContext: %v", err)
	}
	ctx := dtc.GetCommonTlsContext()
	if got := ctx.GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != sds.DefaultName {
		t.Errorf("certificate secret %q, want %q", got, sds.DefaultName)
	}
	if got := ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName(); got != sds.RootName {
		t.Errorf("validation secret %q, want %q", got, sds.RootName)
	}
	if !dtc.GetRequireClientCertificate().GetValue() {
		t.Error("the example must require client certificates (mTLS)")
	}
}
