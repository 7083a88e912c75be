package app_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"

	"google.golang.org/protobuf/types/known/structpb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/internal/app"
)

// scrape reads a Prometheus text exposition: series (name{labels}) ->
// value.
func scrape(t *testing.T, u string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		l := s.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

func csrFor(t *testing.T, id string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// openADS opens an ADS stream to warden serve at addr over TLS (roots:
// pool), authenticated with bearer token tok; cancel ends it (the test's
// cleanup does too).
func openADS(t *testing.T, addr string, pool *x509.CertPool, tok string) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, context.CancelFunc) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(tok)), 2*time.Minute)
	t.Cleanup(func() { cancel(); conn.Close() })
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ads, cancel
}

// adsProxy connects sleep's sidecar over ADS, ACKs every type and
// returns the stream's cancel (the proxy leaves when it is called).
func adsProxy(t *testing.T, addr string, pool *x509.CertPool, tok string) context.CancelFunc {
	t.Helper()
	ads, cancel := openADS(t, addr, pool, tok)
	node := &corev3.Node{Id: "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local"}
	for _, typ := range []string{resource.ListenerType, resource.ClusterType, resource.EndpointType, resource.RouteType, resource.SecretType} {
		subscribeAndACK(t, ads, node, typ)
	}
	return cancel
}

// subscribeAndACK asks for typ on the stream and ACKs the response.
func subscribeAndACK(t *testing.T, ads discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *corev3.Node, typ string) {
	t.Helper()
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
		t.Fatal(err)
	}
	var resp *discovery.DiscoveryResponse
	for resp == nil || resp.TypeUrl != typ {
		var err error
		if resp, err = ads.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
}

// TestServeMetrics: /metrics carries Istio's CA and xDS metrics and
// warden's own, with values that follow what happened: every
// certificate bench ca got is counted as issued; each refusal is counted
// by its reason; a proxy's pushes, convergence and NACKs are counted;
// the expiry gauges are the root's.
func TestServeMetrics(t *testing.T) {
	httpAddr := testkit.FreeAddr(t)
	m := startMeshWith(t, nil, nil, []string{"--http-listen", httpAddr}, "default/sleep")
	metricsURL := "http://" + httpAddr + "/metrics"
	before := scrape(t, metricsURL)
	for _, name := range []string{
		"citadel_server_csr_count", "citadel_server_success_cert_issuance_count", "citadel_server_authentication_failure_count",
		"citadel_server_csr_parsing_err_count", "citadel_server_id_extraction_err_count", `citadel_server_csr_sign_err_count{error="invalid_ttl"}`,
		"citadel_server_root_cert_expiry_timestamp", "citadel_server_cert_chain_expiry_timestamp", `pilot_xds{version=""}`, `pilot_xds_pushes{type="lds"}`,
		`pilot_total_xds_rejects{type="lds"}`, "pilot_proxy_convergence_time_count", "warden_ca_signing_seconds_count", "warden_sds_streams",
		"warden_sds_pushes_total", "warden_xds_config_reports", "warden_config_reload_failures_total", "warden_ca_rotation_phase",
		"warden_ca_trust_bundle_roots", "process_cpu_seconds_total", "go_memstats_heap_inuse_bytes",
	} {
		if _, ok := before[name]; !ok {
			t.Errorf("no series %s on /metrics", name)
		}
	}
	root, err := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(root)
	rc, _ := x509.ParseCertificate(b.Bytes)
	if got := before["citadel_server_root_cert_expiry_timestamp"]; got != float64(rc.NotAfter.Unix()) {
		t.Errorf("root expiry %v, root-cert.pem says %d", got, rc.NotAfter.Unix())
	}

	// bench ca: the issuance counter moves by exactly what bench got.
	code, out, stderr := run(t, "bench", "ca", "--addr", m.addr, "--data-dir", m.data, "--duration", "1s", "--warmup", "200ms",
		"--concurrency", "4", "--server-metrics", metricsURL)
	if code != 0 {
		t.Fatalf("bench ca: %s", stderr)
	}
	match := regexp.MustCompile(`issued in all, warm-up included: (\d+)`).FindStringSubmatch(out)
	if match == nil {
		t.Fatalf("bench ca printed no total:\n%s", out)
	}
	issued, _ := strconv.Atoi(match[1])
	after := scrape(t, metricsURL)
	delta := func(series string) float64 { return after[series] - before[series] }
	if got := delta("citadel_server_success_cert_issuance_count"); int(got) != issued || issued == 0 {
		t.Errorf("issuance counter moved by %v; bench ca got %d certificates", got, issued)
	}
	if got := delta("citadel_server_csr_count"); int(got) != issued {
		t.Errorf("CSR counter moved by %v, want %d", got, issued)
	}
	if got := delta("warden_ca_signing_seconds_count"); int(got) != issued {
		t.Errorf("signing latency observations moved by %v, want %d", got, issued)
	}

	// One refusal of each kind, counted by reason.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	c, err := client.New(client.Config{Addr: m.addr, Roots: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := os.ReadFile(filepath.Join(m.dir, "default-sleep.token"))
	tok := strings.TrimSpace(string(raw))
	sleep, flask := "spiffe://cluster.local/ns/default/sa/sleep", "spiffe://cluster.local/ns/default/sa/flaskapp"
	ctx := context.Background()
	for _, r := range []struct {
		csr   []byte
		ttl   time.Duration
		token string
	}{
		{[]byte("not a CSR"), 0, tok},
		{csrFor(t, flask), 0, tok},
		{csrFor(t, sleep), 0, "not.a.token"},
		{csrFor(t, sleep), 100 * 24 * time.Hour, tok},
	} {
		if _, err := c.CreateCertificate(ctx, r.csr, r.ttl, r.token); err == nil {
			t.Fatal("a bad request got a certificate")
		}
	}
	before, after = after, scrape(t, metricsURL)
	for series, want := range map[string]float64{
		"citadel_server_csr_count": 4, "citadel_server_csr_parsing_err_count": 1, "citadel_server_id_extraction_err_count": 1,
		"citadel_server_authentication_failure_count": 1, `citadel_server_csr_sign_err_count{error="invalid_ttl"}`: 1,
		"citadel_server_success_cert_issuance_count": 0,
	} {
		if got := delta(series); got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}

	// A proxy over ADS: pushed, converged once it ACKs, and a NACK counted.
	ads, cancel := openADS(t, m.addr, pool, tok)
	node := &corev3.Node{Id: "sidecar~127.0.0.4~sleep.default~default.svc.cluster.local",
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"ISTIO_VERSION": structpb.NewStringValue("1.24.2")}}}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	lds, err := ads.Recv()
	if err != nil {
		t.Fatal(err)
	}
	before = after
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, VersionInfo: lds.VersionInfo, ResponseNonce: lds.Nonce}); err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResponseNonce: lds.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "test: listener refused"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = scrape(t, metricsURL)
		if delta(`pilot_total_xds_rejects{type="lds"}`) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the NACK was not counted: pilot_total_xds_rejects{type=\"lds\"} %v", after[`pilot_total_xds_rejects{type="lds"}`])
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, series := range []string{`pilot_xds_pushes{type="lds"}`, `pilot_xds_pushes{type="sds"}`} {
		if after[series] < 1 {
			t.Errorf("%s = %v after a proxy connected", series, after[series])
		}
	}
	const xdsSeries = `pilot_xds{version="1.24.2"}` // the proxy's ISTIO_VERSION, as istiod labels it
	if after[xdsSeries] != 1 || after[`pilot_xds{version=""}`] != 0 {
		t.Errorf("%s = %v, pilot_xds{version=\"\"} = %v with one proxy of 1.24.2 connected", xdsSeries, after[xdsSeries], after[`pilot_xds{version=""}`])
	}
	// ACK every other type: the proxy has converged.
	for _, typ := range []string{resource.ClusterType, resource.EndpointType, resource.RouteType, resource.SecretType} {
		subscribeAndACK(t, ads, node, typ)
	}
	deadline = time.Now().Add(10 * time.Second)
	for delta("pilot_proxy_convergence_time_count") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no convergence observed once every type was ACKed: %v", delta("pilot_proxy_convergence_time_count"))
		}
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, metricsURL)
	}
	if after[`pilot_xds_push_time_count{type="lds"}`] < 1 || after["warden_xds_config_reports"] != 0 {
		t.Errorf("after the proxy converged: lds push time observations %v, config reports %v (want >= 1, 0)",
			after[`pilot_xds_push_time_count{type="lds"}`], after["warden_xds_config_reports"])
	}
	// A configuration edit: two namespace-wide PeerAuthentications in
	// default conflict, which the compiler reports in sleep's inbound
	// configuration; the one that wins (a) makes mTLS PERMISSIVE where the
	// MeshPolicy made it STRICT. The new listeners' build is timed, and
	// the report counted while the proxy holds it.
	before = after
	os.WriteFile(filepath.Join(m.mesh, "conflict.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: default}
spec: {mtls: {mode: STRICT}}
`), 0o644)
	deadline = time.Now().Add(15 * time.Second)
	for after["warden_xds_config_reports"] != 1 || delta(`pilot_xds_push_time_count{type="lds"}`) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("after the edit: config reports %v (want 1), lds push time observations moved by %v (want >= 1)",
				after["warden_xds_config_reports"], delta(`pilot_xds_push_time_count{type="lds"}`))
		}
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, metricsURL)
	}
	cancel()
	deadline = time.Now().Add(10 * time.Second)
	for after[xdsSeries] != 0 || after["warden_xds_config_reports"] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, config reports %v after the proxy left", xdsSeries, after[xdsSeries], after["warden_xds_config_reports"])
		}
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, metricsURL)
	}

	// An invalid object in --config-dir: the reload is refused, once per
	// distinct error; no object is left out on its own in standalone mode
	// (warden_config_rejected_objects is Kubernetes mode's).
	before = after
	os.WriteFile(filepath.Join(m.mesh, "typo.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: default}\nspec: {action: ALOW}\n"), 0o644)
	deadline = time.Now().Add(10 * time.Second)
	for delta("warden_config_reload_failures_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the refused reload was not counted: %v", delta("warden_config_reload_failures_total"))
		}
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, metricsURL)
	}
	time.Sleep(2500 * time.Millisecond) // two more polls of the same invalid directory
	after = scrape(t, metricsURL)
	if got := delta("warden_config_reload_failures_total"); got != 1 || after["warden_config_rejected_objects"] != 0 {
		t.Errorf("one invalid file: reload failures moved by %v (want 1), rejected objects %v (want 0)", got, after["warden_config_rejected_objects"])
	}

	// Central SDS: a stream is counted while open, and its identity's
	// snapshot is a push.
	before = after
	sdsStream := openCentralSDS(t, m, "flaskapp")
	after = scrape(t, metricsURL)
	if after["warden_sds_streams"] != 1 || delta("warden_sds_pushes_total") < 1 {
		t.Errorf("an open SDS stream: warden_sds_streams %v (want 1), warden_sds_pushes_total moved by %v (want >= 1)",
			after["warden_sds_streams"], delta("warden_sds_pushes_total"))
	}

	// A root rotation, step by step through the admin socket: one
	// rotation started, its phase followed, the bundle's two roots pushed
	// to the open SDS stream.
	if before["warden_ca_root_rotations_started_total"] != 0 || before["warden_ca_rotation_phase"] != 0 || before["warden_ca_trust_bundle_roots"] != 1 {
		t.Errorf("before a rotation: started %v, phase %v, roots %v", before["warden_ca_root_rotations_started_total"],
			before["warden_ca_rotation_phase"], before["warden_ca_trust_bundle_roots"])
	}
	for _, step := range []struct {
		args          []string
		phase, roots  float64
		pushesAtLeast float64
	}{
		{[]string{"prepare"}, 1, 1, 0},
		{[]string{"publish"}, 2, 2, 1},
		{[]string{"--force", "activate"}, 3, 2, 1},
	} {
		before = after
		rotate(t, m.data, step.args...)
		deadline = time.Now().Add(10 * time.Second)
		for after = scrape(t, metricsURL); after["warden_ca_rotation_phase"] != step.phase || delta("warden_sds_pushes_total") < step.pushesAtLeast; after = scrape(t, metricsURL) {
			if time.Now().After(deadline) {
				t.Fatalf("ca rotate %s: phase %v (want %v), SDS pushes moved by %v (want >= %v)", strings.Join(step.args, " "),
					after["warden_ca_rotation_phase"], step.phase, delta("warden_sds_pushes_total"), step.pushesAtLeast)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if after["warden_ca_root_rotations_started_total"] != 1 || after["warden_ca_trust_bundle_roots"] != step.roots || after["warden_sds_streams"] != 1 {
			t.Errorf("after ca rotate %s: rotations started %v (want 1), bundle roots %v (want %v), SDS streams %v (want 1)", strings.Join(step.args, " "),
				after["warden_ca_root_rotations_started_total"], after["warden_ca_trust_bundle_roots"], step.roots, after["warden_sds_streams"])
		}
	}
	sdsStream()
	deadline = time.Now().Add(10 * time.Second)
	for after["warden_sds_streams"] != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("warden_sds_streams = %v after the stream closed", after["warden_sds_streams"])
		}
		time.Sleep(50 * time.Millisecond)
		after = scrape(t, metricsURL)
	}
}

// openCentralSDS opens a central SDS stream to m's serve for default/sa
// (a token minted from m's data directory), reads the first answer, and
// returns the stream's end.
func openCentralSDS(t *testing.T, m *meshFixture, sa string) context.CancelFunc {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", m.data, "--ns", "default", "--sa", sa)
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	root, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	conn, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(tok)), 2*time.Minute)
	t.Cleanup(func() { cancel(); conn.Close() })
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"},
		ResourceNames: []string{"default", "ROOTCA"}, TypeUrl: resource.SecretType}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	// Keep reading (pushes), so that the stream never blocks the server.
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				return
			}
		}
	}()
	return func() { cancel(); conn.Close() }
}

// TestCertRequestWithoutRoot: outside a data directory, cert request says
// where the trust anchors come from instead of "no such file".
func TestCertRequestWithoutRoot(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := run(t, "cert", "request", "--ca", "127.0.0.1:1", "--data-dir", filepath.Join(dir, "none"), "--token-file", "/dev/null", "--out", filepath.Join(dir, "out"))
	if code != 2 || !strings.Contains(stderr, "kubectl get configmap istio-ca-root-cert") || !strings.Contains(stderr, "--root-cert (or $WARDEN_ROOT_CERT)") ||
		!strings.Contains(stderr, "the pod's mount of the istio-ca-root-cert ConfigMap at /var/run/secrets/istio/root-cert.pem") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// TestCertRequestRootFromEnvironment: outside the data directory (in a
// pod, say), $WARDEN_ROOT_CERT names the trust anchors, for cert request
// and agent alike.
func TestCertRequestRootFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	tokFile := sleepTokenFile(t, dir, data)
	t.Setenv("WARDEN_ROOT_CERT", filepath.Join(data, "root-cert.pem"))
	code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--data-dir", filepath.Join(dir, "elsewhere"), "--token-file", tokFile, "--out", filepath.Join(dir, "out"))
	if code != 0 || !strings.HasPrefix(stdout, "spiffe://cluster.local/ns/default/sa/sleep\n") {
		t.Fatalf("cert request with WARDEN_ROOT_CERT: %d %s%s", code, stdout, stderr)
	}
	t.Setenv("WARDEN_ROOT_CERT", filepath.Join(dir, "missing.pem"))
	code, _, stderr = run(t, "agent", "--ca", addr, "--token-file", tokFile, "--sds-socket", filepath.Join(dir, "sds.sock"), "--workload-api-socket", "")
	if code == 0 || !strings.Contains(stderr, filepath.Join(dir, "missing.pem")) {
		t.Fatalf("agent with WARDEN_ROOT_CERT naming a missing file: %d %s", code, stderr)
	}
}

// TestAgentMetrics: warden agent --metrics-listen exports its SVID (held,
// expiry), rotations, SDS streams and bundle.
func TestAgentMetrics(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	tokFile := sleepTokenFile(t, dir, data)
	sdsSock, out, metricsAddr := filepath.Join(dir, "sds.sock"), filepath.Join(dir, "out"), testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tokFile,
			"--sds-socket", sdsSock, "--workload-api-socket", "", "--output-dir", out, "--ttl", "4s", "--metrics-listen", metricsAddr}, &logs, &logs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFile(t, filepath.Join(out, "cert-chain.pem"))
	chain, _ := os.ReadFile(filepath.Join(out, "cert-chain.pem"))
	b, _ := pem.Decode(chain)
	leaf, _ := x509.ParseCertificate(b.Bytes)
	// The metrics port opens once the agent serves (after its first SVID).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent metrics never served: %v\n%s", err, logs.String())
		}
	}
	m := scrape(t, "http://"+metricsAddr+"/metrics")
	if m["warden_agent_svids"] != 1 || m["warden_agent_trust_bundle_roots"] != 1 || m["warden_agent_svid_expiry_timestamp"] != float64(leaf.NotAfter.Unix()) {
		t.Fatalf("agent metrics: svids %v roots %v expiry %v (leaf %d)\n%s", m["warden_agent_svids"], m["warden_agent_trust_bundle_roots"],
			m["warden_agent_svid_expiry_timestamp"], leaf.NotAfter.Unix(), logs.String())
	}
	// A 4 s certificate rotates at about half its life.
	deadline := time.Now().Add(15 * time.Second)
	for m["warden_agent_svid_rotations_total"] < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no rotation counted: %v", m["warden_agent_svid_rotations_total"])
		}
		time.Sleep(200 * time.Millisecond)
		m = scrape(t, "http://"+metricsAddr+"/metrics")
	}
	if _, ok := m["warden_agent_sds_streams"]; !ok {
		t.Fatal("no warden_agent_sds_streams")
	}
}
