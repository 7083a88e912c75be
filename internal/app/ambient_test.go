package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/xds/ambient"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

const ambientPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-front, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  rules: [{from: [{source: {namespaces: [front]}}]}]
`

// openDelta opens delta ADS over TLS with a bearer token.
func openDelta(t *testing.T, m *meshFixture, tokenOf string) discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	root, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	tok, _ := os.ReadFile(filepath.Join(m.dir, tokenOf+".token"))
	conn, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(string(tok))), time.Minute)
	t.Cleanup(func() { cancel(); conn.Close() })
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestServeZtunnel: warden serve (standalone, over TLS, a token from
// 'warden token') serves a trusted node account's ztunnel the L4
// authorization of its --config-dir, and refuses a workload's token.
func TestServeZtunnel(t *testing.T) {
	m := startMeshWith(t, nil, map[string]string{"ambient.yaml": ambientPolicy}, []string{"--trusted-node-accounts", "infra/ztunnel"}, "infra/ztunnel", "default/flaskapp")
	zt := openDelta(t, m, "infra-ztunnel")
	node := &corev3.Node{Id: "ztunnel~127.0.0.9~ztunnel-1.infra~infra.svc.cluster.local"}
	if err := zt.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: ambient.AuthorizationType}); err != nil {
		t.Fatal(err)
	}
	r, err := zt.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, res := range r.Resources {
		names = append(names, res.Name)
		if res.Name == "default/allow-front" {
			var a security.Authorization
			if err := proto.Unmarshal(res.Resource.Value, &a); err != nil {
				t.Fatal(err)
			}
			if a.Scope != security.Scope_WORKLOAD_SELECTOR || a.Groups[0].Rules[0].Matches[0].Namespaces[0].GetExact() != "front" {
				t.Errorf("allow-front: %v", &a)
			}
		}
	}
	if !strings.Contains(strings.Join(names, ","), "default/allow-front") {
		t.Fatalf("authorizations %v lack default/allow-front", names)
	}

	app := openDelta(t, m, "default-flaskapp")
	if err := app.Send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "ztunnel~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"}, TypeUrl: ambient.AuthorizationType}); err != nil {
		t.Fatal(err)
	}
	_, err = app.Recv()
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "default/flaskapp is not a trusted node account (--trusted-node-accounts infra/ztunnel)") {
		t.Errorf("a workload as ztunnel: %v", err)
	}
}
