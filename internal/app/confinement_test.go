package app_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/internal/testkit"
)

// confinedMesh is a standalone serve over a config directory with
// default/sleep registered at 127.0.0.4, and sleep's token.
type confinedMesh struct {
	addr, mesh string
	pool       *x509.CertPool
	sleepTok   string
	logs       *syncBuffer
}

func startConfinedMesh(t *testing.T) *confinedMesh {
	t.Helper()
	dir := t.TempDir()
	m := &confinedMesh{mesh: filepath.Join(dir, "mesh"), addr: testkit.FreeAddr(t)}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(m.mesh, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(m.mesh, "sleep.yaml"), `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sleep, namespace: default}
spec:
  hosts: [sleep]
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.0.4, labels: {app: sleep}, serviceAccount: sleep}]
`)
	_, m.logs = serveLogged(t, data, m.addr, "--config-dir", m.mesh, "--push-debounce", "20ms")
	m.pool = x509.NewCertPool()
	b, err := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	m.pool.AppendCertsFromPEM(b)
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep")
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	m.sleepTok = tok
	return m
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStreamClosedWhenItsWorkloadChangesIdentity: a stream authenticated
// as default/sleep binds to a node whose address the registry does not
// know yet (allowed: it gets the namespace's outbound configuration). A
// ServiceEntry edit then registers that address to a gateway workload
// running as default/ingress-gw, with an HTTPS port. The stream is closed
// with PermissionDenied, and nothing it received before names the
// workload's port: no configuration of the new workload reached it.
func TestStreamClosedWhenItsWorkloadChangesIdentity(t *testing.T) {
	m := startConfinedMesh(t)
	ads, _ := openADS(t, m.addr, m.pool, m.sleepTok)
	node := &corev3.Node{Id: "sidecar~127.0.0.60~sleep-2.default~default.svc.cluster.local"}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.SecretType} {
		subscribeAndACK(t, ads, node, typ)
	}
	// Everything the stream receives from now on, ACKed, until it ends.
	type got struct {
		resp *discovery.DiscoveryResponse
		err  error
	}
	recv := make(chan got, 64)
	go func() {
		for {
			resp, err := ads.Recv()
			recv <- got{resp, err}
			if err != nil {
				return
			}
			_ = ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
		}
	}()
	writeFile(t, filepath.Join(m.mesh, "gateway.yaml"), `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ingress, namespace: default}
spec:
  hosts: [ingress]
  resolution: STATIC
  ports: [{number: 8443, name: https-ingress}]
  endpoints: [{address: 127.0.0.60, labels: {istio: ingressgateway}, serviceAccount: ingress-gw}]
`)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case g := <-recv:
			if g.err != nil {
				if status.Code(g.err) != codes.PermissionDenied || !strings.Contains(g.err.Error(), "runs as spiffe://cluster.local/ns/default/sa/ingress-gw") {
					t.Fatalf("the stream ended with %v, want PermissionDenied naming the new identity", g.err)
				}
				if !strings.Contains(m.logs.String(), "no longer runs as their identity") {
					t.Errorf("the closing is not logged:\n%s", m.logs.String())
				}
				return
			}
			for _, r := range g.resp.Resources {
				if strings.Contains(string(r.Value), "8443") {
					t.Fatalf("the stream received the new workload's configuration (%s) before it was closed", g.resp.TypeUrl)
				}
			}
		case <-deadline:
			t.Fatal("the stream was not closed after its address was registered to another identity")
		}
	}
}

// TestUnregisteredGatewayRefused: a gateway's node must be a registered
// workload; a stream of any identity of the namespace asking as an
// unknown router (which would match every selector-less Gateway) is
// refused, with the fix in the message.
func TestUnregisteredGatewayRefused(t *testing.T) {
	m := startConfinedMesh(t)
	ads, _ := openADS(t, m.addr, m.pool, m.sleepTok)
	node := &corev3.Node{Id: "router~127.0.0.61~gw-1.default~default.svc.cluster.local"}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	_, err := ads.Recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no workload at 127.0.0.61 in namespace default is registered") {
		t.Fatalf("an unregistered gateway got %v, want PermissionDenied naming the fix", err)
	}
}
