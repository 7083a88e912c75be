package app_test

import (
	"context"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/wardenmesh/warden/internal/app"
)

// TestMeshEndToEnd runs the flaskapp story with grpc-go's real xDS client
// and xDS-enabled server against warden serve's ADS over loopback:
// VirtualService routing to a subset, a weighted split taking effect in a
// running client, mTLS required under STRICT, and RBAC DENY enforced by
// the gRPC server.
func TestMeshEndToEnd(t *testing.T) {
	m := startMesh(t, nil, nil, "default/flaskapp", "default/sleep", "default/intruder")
	addr, port, mesh := m.addr, m.port, m.mesh
	certs := map[string]string{"flaskapp": m.certs["default/flaskapp"], "sleep": m.certs["default/sleep"], "intruder": m.certs["default/intruder"]}
	node := func(ip, pod string) string { return "sidecar~" + ip + "~" + pod + ".default~default.svc.cluster.local" }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for v, ip := range map[string]string{"v1": "127.0.0.2", "v2": "127.0.0.3"} {
		demoServer(t, ctx, &wg, "--xds", addr, "--node", node(ip, "flaskapp-"+v), "--certs", certs["flaskapp"],
			"--listen", net.JoinHostPort(ip, port), "--version", v)
	}
	target := "xds:///flaskapp.default.svc.cluster.local:" + port
	client := func(sa, ip string, n int, every time.Duration) string {
		var out, errOut syncBuffer
		app.Run(ctx, []string{"demo", "client", "--xds", addr, "--node", node(ip, sa), "--certs", certs[sa], "--target", target,
			"-n", itoa(n), "--every", every.String()}, &out, &errOut)
		return out.String()
	}

	// Every call goes to v2 (the VirtualService's subset), over mTLS.
	out := client("sleep", "127.0.0.4", 20, 0)
	if c := strings.Count(out, "flaskapp v2 (mTLS to spiffe://cluster.local/ns/default/sa/flaskapp; server saw spiffe://cluster.local/ns/default/sa/sleep)"); c != 20 {
		t.Fatalf("want 20 mTLS calls answered by v2, got %d:\n%s", c, out)
	}

	// A running client sees the 50/50 split once the edit is pushed.
	running := make(chan string, 1)
	go func() { running <- client("sleep", "127.0.0.4", 400, 15*time.Millisecond) }()
	time.Sleep(500 * time.Millisecond)
	routing := filepath.Join(mesh, "routing.yaml")
	b, _ := os.ReadFile(routing)
	split := strings.Replace(string(b), "    - destination: {host: flaskapp, subset: v2}",
		"    - {destination: {host: flaskapp, subset: v1}, weight: 50}\n    - {destination: {host: flaskapp, subset: v2}, weight: 50}", 1)
	if split == string(b) {
		t.Fatal("routing.yaml did not have the expected route")
	}
	if err := os.WriteFile(routing, []byte(split), 0o644); err != nil {
		t.Fatal(err)
	}
	out = <-running
	lines := strings.Split(out, "\n")
	first := -1
	for i, l := range lines {
		if strings.Contains(l, "flaskapp v1") {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("the running client never reached v1 after the edit:\n%s", out)
	}
	after := lines[first:]
	v1, v2 := 0, 0
	for _, l := range after {
		v1 += strings.Count(l, "flaskapp v1 (mTLS")
		v2 += strings.Count(l, "flaskapp v2 (mTLS")
	}
	n := v1 + v2
	// 50/50 over n calls: stay within 5 standard deviations (sqrt(n)/2).
	if n < 100 || float64(v1) < float64(n)/2-2.5*sqrtf(n) || float64(v1) > float64(n)/2+2.5*sqrtf(n) {
		t.Fatalf("after the edit: v1=%d v2=%d of %d calls; want a 50/50 split", v1, v2, n)
	}
	t.Logf("after the edit: v1=%d v2=%d", v1, v2)

	// intruder has a valid mesh identity, but the AuthorizationPolicy
	// only allows sleep: grpc-go's RBAC filter refuses.
	out = client("intruder", "127.0.0.5", 3, 0)
	if c := strings.Count(out, "PermissionDenied: incoming RPC did not match an allow policy"); c != 3 {
		t.Fatalf("want 3 PermissionDenied calls from intruder, got:\n%s", out)
	}

	// STRICT: a client outside the mesh (plaintext) cannot call v2.
	cc, err := grpc.NewClient(net.JoinHostPort("127.0.0.3", port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	if _, err := testgrpc.NewTestServiceClient(cc).UnaryCall(cctx, &testgrpc.SimpleRequest{}); err == nil {
		t.Fatal("a plaintext client outside the mesh was served under STRICT")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func sqrtf(n int) float64 { return math.Sqrt(float64(n)) }
