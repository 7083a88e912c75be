package app_test

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/testkit"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestCheckStandalone: warden check on a running standalone install: all
// ok (exit 0); a root expiring within the warning window is a warning; a
// VirtualService to an unknown host and a selector matching nothing make
// it fail (exit 1, JSON for scripts); a proxy that does not ACK is named.
func TestCheckStandalone(t *testing.T) {
	httpAddr := testkit.FreeAddr(t)
	m := startMeshWith(t, nil, nil, []string{"--http-listen", httpAddr}, "default/sleep")
	code, out, stderr := run(t, "check", "--data-dir", m.data, "--config-dir", m.mesh, "--server", httpAddr, "--kubernetes=false")
	if code != 0 || !strings.Contains(out, "0 errors") || !strings.Contains(out, "chains to the trust bundle") || !strings.Contains(out, "proxies connected, all ACKed") {
		t.Fatalf("healthy install: exit %d\n%s%s", code, out, stderr)
	}
	// The same root is within a 20-year warning window.
	code, out, _ = run(t, "check", "--data-dir", m.data, "--kubernetes=false", "--expiry-warning", "175200h")
	if code != 0 || !strings.Contains(out, "WARNING ca") || !strings.Contains(out, "expires in") {
		t.Fatalf("expiring root: exit %d\n%s", code, out)
	}

	// Broken routing and a selector that matches nothing.
	bad := filepath.Join(m.dir, "bad")
	os.MkdirAll(bad, 0o755)
	b, _ := os.ReadFile(filepath.Join(m.mesh, "services.yaml"))
	os.WriteFile(filepath.Join(bad, "services.yaml"), b, 0o644)
	os.WriteFile(filepath.Join(bad, "bad.yaml"), []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: default}
spec:
  hosts: [flaskapp]
  http: [{route: [{destination: {host: flaskap}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: default}
spec:
  selector: {matchLabels: {app: flask}}
`), 0o644)
	code, out, _ = run(t, "check", "--data-dir", m.data, "--config-dir", bad, "--kubernetes=false", "-o", "json")
	var rep struct {
		Failed  bool
		Results []struct{ Check, Status, Message string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	found := map[string]bool{}
	for _, r := range rep.Results {
		switch {
		case r.Status == "error" && strings.Contains(r.Message, "VirtualService default/typo: destination host flaskap.default.svc.cluster.local is not in the service registry"):
			found["host"] = true
		case r.Status == "warning" && strings.Contains(r.Message, "AuthorizationPolicy default/nobody: selector app=flask matches no workload"):
			found["selector"] = true
		}
	}
	if code != 1 || !rep.Failed || !found["host"] || !found["selector"] {
		t.Fatalf("broken configuration: exit %d, found %v\n%s", code, found, out)
	}

	// A proxy that took a listener and never ACKed it.
	root, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	raw, _ := os.ReadFile(filepath.Join(m.dir, "default-sleep.token"))
	ads, _ := openADS(t, m.addr, pool, string(raw))
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "check", "--data-dir", m.data, "--server", httpAddr, "--kubernetes=false", "--stale-after", "0s")
	// The server set every type at once; the proxy asked for listeners only.
	late := regexp.QuoteMeta(checkLine("error", "proxies", "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local has not ACKed cds, eds, lds, rds, sds for ")) + `\d+s`
	if code != 1 || !matchLine(out, late) {
		t.Fatalf("a proxy that does not ACK: exit %d\n%s", code, out)
	}
}
