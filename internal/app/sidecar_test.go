package app_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
)

// TestSidecarScopesProxylessClient: grpc-go's xDS client, scoped by a
// Sidecar that names only its own service, cannot resolve flaskapp,
// while a client the Sidecar does not select still reaches it; deleting
// the Sidecar makes flaskapp resolvable for the first client without a
// restart.
func TestSidecarScopesProxylessClient(t *testing.T) {
	sidecar := `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: default}
spec:
  workloadSelector:
    labels: {app: sleep}
  egress:
  - hosts: ["./sleep.default.svc.cluster.local"]
`
	m := startMesh(t, nil, map[string]string{"sidecar.yaml": sidecar}, "default/flaskapp", "default/sleep", "default/intruder")
	node := func(ip, pod string) string { return "sidecar~" + ip + "~" + pod + ".default~default.svc.cluster.local" }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	demoServer(t, ctx, &wg, "--xds", m.addr, "--node", node("127.0.0.3", "flaskapp-v2"), "--certs", m.certs["default/flaskapp"],
		"--listen", net.JoinHostPort("127.0.0.3", m.port), "--version", "v2")
	client := func(sa, ip string, wait time.Duration) string {
		var out syncBuffer
		cctx, ccancel := context.WithTimeout(ctx, wait)
		defer ccancel()
		app.Run(cctx, []string{"demo", "client", "--xds", m.addr, "--node", node(ip, sa), "--certs", m.certs["default/"+sa],
			"--target", "xds:///flaskapp.default.svc.cluster.local:" + m.port, "-n", "1"}, &out, &out)
		return out.String()
	}

	// warden serves no listener for flaskapp to sleep: grpc-go keeps
	// waiting for one (its resource-not-found timer is 15 s).
	out := client("sleep", "127.0.0.4", 3*time.Second)
	if strings.Contains(out, "flaskapp v2") || !strings.Contains(out, "DeadlineExceeded") {
		t.Fatalf("sleep, scoped to itself, reached flaskapp or failed for another reason:\n%s", out)
	}
	t.Logf("sleep, scoped: %s", strings.TrimSpace(out))
	// intruder is not selected: it resolves flaskapp (and is refused by
	// its AuthorizationPolicy, which needs a connection).
	if out := client("intruder", "127.0.0.5", 20*time.Second); !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("intruder, not scoped, did not reach flaskapp:\n%s", out)
	}

	if err := os.Remove(filepath.Join(m.mesh, "sidecar.yaml")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := client("sleep", "127.0.0.4", 5*time.Second)
		if strings.Contains(out, "flaskapp v2 (mTLS") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep never reached flaskapp after the Sidecar was deleted:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
