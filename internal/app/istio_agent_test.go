package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// Istio's own agent against warden serve: hack/istioagent.sh builds
// pilot-agent (unmodified, from istio.io/istio) and istio-probe (Istio's
// citadel client and secret cache; gRPC apps reading the bootstrap
// pilot-agent writes); make test passes the folder in
// WARDEN_ISTIO_AGENT_DIR.

func istioAgentDir(t *testing.T) string {
	return toolDir(t, "WARDEN_ISTIO_AGENT_DIR", "hack/istioagent.sh", "pilot-agent", "istio-probe")
}

// toolDir is the folder a hack/ script built (make test exports it in
// env), holding files; the test fails, naming the script, without it.
func toolDir(t *testing.T, env, script string, files ...string) string {
	t.Helper()
	dir := os.Getenv(env)
	if dir == "" {
		t.Fatalf("%s is not set: run make test, or export %s=$(%s)", env, env, script)
	}
	for _, b := range files {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%s: %v", env, err)
		}
	}
	return dir
}

// probe runs istio-probe to completion: its JSON results, or its error.
func probe(t *testing.T, dir string, env []string, args ...string) ([]map[string]any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "istio-probe"), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
		return nil, fmt.Errorf("%v: %s", err, lines[len(lines)-1])
	}
	var res []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasPrefix(l, "{") {
			continue // Istio's log lines
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			return nil, fmt.Errorf("istio-probe printed %q: %v", l, err)
		}
		res = append(res, m)
	}
	return res, nil
}

func strs(v any) []string {
	var out []string
	for _, s := range v.([]any) {
		out = append(out, s.(string))
	}
	return out
}

// istioAgent is Istio's pilot-agent for one workload, proxyless (as
// Istio's grpc-agent injection template runs it), in a folder standing
// for the pod's filesystem.
type istioAgent struct {
	name      string
	dir       string // the pod's root
	bootstrap string // the gRPC bootstrap it wrote, the socket path made absolute
	certs     string // OUTPUT_CERTS
}

// istiodSAN is the name Istio's agent checks the control plane's
// certificate for (ISTIOD_SAN; in a pod, the host of
// istiod.istio-system.svc:15012), which warden serves with --istiod-names.
const istiodSAN = "istiod.istio-system.svc"

// agentCertTTL is the certificate lifetime the agents ask for
// (SECRET_TTL): they renew at half of it, so a root rotation reaches
// their files within the test.
const agentCertTTL = "24s"

// startIstioAgent runs pilot-agent for pod name as Istio's injector
// configures it, except that the control plane is dialled by address
// with ISTIOD_SAN naming istiod (as on a VM): the CA is the discovery
// address, as when CA_ADDR is unset. With wardenName, the gRPC bootstrap
// the test hands the app asks for its server listeners under warden's own
// name instead of Istio's (warden serves both).
func startIstioAgent(t *testing.T, bin string, m *meshFixture, name, ip, sa string, wardenName bool) *istioAgent {
	t.Helper()
	a := &istioAgent{name: name, dir: filepath.Join(m.dir, "pod-"+name)}
	a.certs = filepath.Join(a.dir, "var", "lib", "istio", "data")
	for _, d := range []string{filepath.Join(a.dir, "var", "run", "secrets", "tokens"), a.certs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := os.ReadFile(filepath.Join(m.dir, "default-"+sa+".token"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(a.dir, "var", "run", "secrets", "tokens", "istio-token"), tok, 0o600)
	_, status, _ := net.SplitHostPort(testkit.FreeAddr(t))
	root := filepath.Join(m.data, "root-cert.pem")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pilot-agent"), "proxy", "sidecar", "--domain", "default.svc.cluster.local")
	cmd.Dir = a.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + a.dir,
		fmt.Sprintf(`PROXY_CONFIG={"discoveryAddress":%q,"statusPort":%s}`, m.addr, status),
		"ISTIOD_SAN=" + istiodSAN, "SECRET_TTL=" + agentCertTTL, "CA_ROOT_CA=" + root, "XDS_ROOT_CA=" + root,
		"POD_NAME=" + name, "POD_NAMESPACE=default", "INSTANCE_IP=" + ip, "SERVICE_ACCOUNT=" + sa,
		"DISABLE_ENVOY=true", "GRPC_XDS_BOOTSTRAP=./etc/istio/proxy/grpc-bootstrap.json", "OUTPUT_CERTS=" + a.certs,
		"ISTIO_META_GENERATOR=grpc"}
	startLogged(t, cmd, cancel, "pilot-agent "+name)
	written := filepath.Join(a.dir, "etc", "istio", "proxy", "grpc-bootstrap.json")
	for _, f := range []string{written, filepath.Join(a.certs, "cert-chain.pem"), filepath.Join(a.certs, "root-cert.pem")} {
		waitFile(t, f)
	}
	// In a pod the working directory is /, so the bootstrap's
	// unix:///etc/istio/proxy/XDS is the agent's socket; here the pod's
	// root is a folder.
	b, err := os.ReadFile(written)
	if err != nil {
		t.Fatal(err)
	}
	sock := "unix://" + filepath.Join(a.dir, "etc", "istio", "proxy", "XDS")
	if !bytes.Contains(b, []byte(`"unix:///etc/istio/proxy/XDS"`)) {
		t.Fatalf("pilot-agent's bootstrap does not point at its XDS socket:\n%s", b)
	}
	b = bytes.ReplaceAll(b, []byte("unix:///etc/istio/proxy/XDS"), []byte(sock))
	if wardenName {
		const istioName = `"xds.istio.io/grpc/lds/inbound/%s"`
		if !bytes.Contains(b, []byte(istioName)) {
			t.Fatalf("pilot-agent's bootstrap does not name server listeners %s:\n%s", istioName, b)
		}
		b = bytes.ReplaceAll(b, []byte(istioName), []byte(`"grpc/server?xds.resource.listening_address=%s"`))
	}
	a.bootstrap = filepath.Join(a.dir, "bootstrap.json")
	os.WriteFile(a.bootstrap, b, 0o600)
	return a
}

// rootsAndSigner reads a's OUTPUT_CERTS: the fingerprints of the roots
// in root-cert.pem, and which of them cert-chain.pem's leaf chains to
// ("" if none, or several).
func (a *istioAgent) rootsAndSigner() ([]string, string, error) {
	pem, err := os.ReadFile(filepath.Join(a.certs, "root-cert.pem"))
	if err != nil {
		return nil, "", err
	}
	roots, err := ca.ParseCerts(pem)
	if err != nil {
		return nil, "", fmt.Errorf("%s root-cert.pem: %w", a.name, err)
	}
	chainPEM, err := os.ReadFile(filepath.Join(a.certs, "cert-chain.pem"))
	if err != nil {
		return nil, "", err
	}
	chain, err := ca.ParseCerts(chainPEM)
	if err != nil || len(chain) == 0 {
		return nil, "", fmt.Errorf("%s cert-chain.pem: %v", a.name, err)
	}
	// Istio's agent writes the answer's whole chain, the roots included,
	// to cert-chain.pem: the leaf is verified against each root alone.
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	var fps []string
	signer := ""
	for _, r := range roots {
		fps = append(fps, ca.Fingerprint(r))
		pool := x509.NewCertPool()
		pool.AddCert(r)
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			signer = ca.Fingerprint(r)
		}
	}
	return fps, signer, nil
}

// eventuallyCalls retries check (which makes calls) for 20 s: a
// configuration change takes a debounce and a push to reach the servers.
func eventuallyCalls(t *testing.T, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startLogged starts cmd (made with a context cancel ends), keeping what
// it writes (stderr, and stdout unless already taken); the process is
// ended when the test is, and the end of its output logged if it failed.
func startLogged(t *testing.T, cmd *exec.Cmd, cancel context.CancelFunc, what string) *syncBuffer {
	t.Helper()
	logs := &syncBuffer{}
	if cmd.Stdout == nil {
		cmd.Stdout = logs
	}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", what, tail(logs.String(), 30))
		}
	})
	return logs
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startProbeServer runs a proxyless gRPC server behind agent a; it
// returns once the server reports SERVING (its listener, with mTLS and
// RBAC, came from warden under Istio's listener name).
func startProbeServer(t *testing.T, bin string, a *istioAgent, listen, version string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "istio-probe"), "grpc-server", "--listen", listen, "--version", version)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+a.bootstrap)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := startLogged(t, cmd, cancel, "grpc server "+version)
	serving := make(chan struct{})
	go func() {
		s := bufio.NewScanner(out)
		closed := false
		for s.Scan() { // read to the end: the server keeps writing its log
			if !closed && strings.HasPrefix(s.Text(), `{"serving"`) {
				close(serving)
				closed = true
			}
		}
	}()
	select {
	case <-serving:
	case <-time.After(30 * time.Second):
		t.Fatalf("grpc server %s never got its listener:\n%s", version, logs.String())
	}
}

// TestIstioAgentDropIn runs Istio's own client code, unmodified, against
// warden serve on the flaskapp mesh: the citadel CA client (token,
// mTLS renewal, another service account's identity refused), the agent's
// secret cache (default and ROOTCA), and pilot-agent in proxyless mode
// for gRPC clients and servers (certificates, listeners under Istio's
// names, routes, clusters, endpoints, mTLS, an AuthorizationPolicy
// enforced, a VirtualService edit followed live); then a root rotation,
// through which the secret cache holds both roots and no call fails.
func TestIstioAgentDropIn(t *testing.T) {
	bin := istioAgentDir(t)
	m := startMeshWith(t, nil, nil, []string{"--rotation-grace", "1s", "--istiod-names"}, "default/flaskapp", "default/sleep", "default/intruder")
	root := filepath.Join(m.data, "root-cert.pem")
	token := func(sa string) string { return filepath.Join(m.dir, "default-"+sa+".token") }
	id := func(sa string) string { return "spiffe://cluster.local/ns/default/sa/" + sa }

	// Istio's citadel client: a token, then mTLS renewal with the
	// certificate it got; sleep's token cannot get flaskapp's identity.
	out := filepath.Join(m.dir, "citadel-sleep")
	res, err := probe(t, bin, nil, "csr", "--ca", m.addr, "--root", root, "--token", token("sleep"), "--id", id("sleep"), "--out", out)
	if err != nil || strs(res[0]["id"])[0] != id("sleep") {
		t.Fatalf("citadel client with a token: %v %v", res, err)
	}
	res, err = probe(t, bin, nil, "csr", "--ca", m.addr, "--root", root, "--cert", filepath.Join(out, "cert-chain.pem"), "--key", filepath.Join(out, "key.pem"), "--id", id("sleep"))
	if err != nil || strs(res[0]["id"])[0] != id("sleep") {
		t.Fatalf("citadel client renewing over mTLS: %v %v", res, err)
	}
	if _, err = probe(t, bin, nil, "csr", "--ca", m.addr, "--root", root, "--token", token("sleep"), "--id", id("flaskapp")); err == nil ||
		!strings.Contains(err.Error(), "code = PermissionDenied") {
		t.Fatalf("sleep's token asking for flaskapp's identity: %v, want PermissionDenied", err)
	}
	// cache: Istio's secret cache's default identity, its ROOTCA roots
	// (fingerprints, in order), and which of them the default chains to.
	cache := func() (string, []string, int) {
		t.Helper()
		res, err := probe(t, bin, nil, "cache", "--ca", m.addr, "--root", root, "--token", token("sleep"), "--ns", "default", "--sa", "sleep")
		if err != nil {
			t.Fatalf("Istio's secret cache: %v", err)
		}
		return strs(res[0]["id"])[0], strs(res[0]["roots"]), int(res[0]["leaf_root"].(float64))
	}
	got, before, signer := cache()
	if got != id("sleep") || len(before) != 1 || signer != 0 {
		t.Fatalf("secret cache: default %s, ROOTCA %v, default chains to root %d", got, before, signer)
	}

	// pilot-agent, proxyless, for two flaskapp servers and two clients;
	// v1's server asks for its listener under Istio's name, v2's under
	// warden's.
	v1 := startIstioAgent(t, bin, m, "flaskapp-v1", "127.0.0.2", "flaskapp", false)
	v2 := startIstioAgent(t, bin, m, "flaskapp-v2", "127.0.0.3", "flaskapp", true)
	sleep := startIstioAgent(t, bin, m, "sleep", "127.0.0.4", "sleep", false)
	intruder := startIstioAgent(t, bin, m, "intruder", "127.0.0.5", "intruder", false)
	agents := []*istioAgent{v1, v2, sleep, intruder}
	startProbeServer(t, bin, v1, net.JoinHostPort("127.0.0.2", m.port), "v1")
	startProbeServer(t, bin, v2, net.JoinHostPort("127.0.0.3", m.port), "v2")
	target := "xds:///flaskapp.default.svc.cluster.local:" + m.port
	calls := func(a *istioAgent, n int) []map[string]any {
		t.Helper()
		res, err := probe(t, bin, []string{"GRPC_XDS_BOOTSTRAP=" + a.bootstrap}, "grpc-client", "--target", target, "-n", fmt.Sprint(n))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// The VirtualService sends everything to v2, over mTLS both ways.
	for _, c := range calls(sleep, 5) {
		if c["code"] != "OK" || c["version"] != "v2" || c["server"] != id("flaskapp") || c["server_saw"] != id("sleep") {
			t.Fatalf("sleep -> flaskapp: %v", c)
		}
	}
	// The AuthorizationPolicy allows sleep only.
	for _, c := range calls(intruder, 2) {
		if c["code"] != "PermissionDenied" {
			t.Fatalf("intruder -> flaskapp: %v, want PermissionDenied", c)
		}
	}
	// A DENY policy applied while the servers run is enforced by them.
	deny := filepath.Join(m.mesh, "deny.yaml")
	os.WriteFile(deny, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]
`), 0o644)
	eventuallyCalls(t, func() error {
		if c := calls(sleep, 1)[0]; c["code"] != "PermissionDenied" || !strings.Contains(fmt.Sprint(c["error"]), "deny") {
			return fmt.Errorf("sleep with a DENY policy for it: %v", c)
		}
		return nil
	})
	os.Remove(deny)
	eventuallyCalls(t, func() error {
		if c := calls(sleep, 1)[0]; c["code"] != "OK" {
			return fmt.Errorf("sleep after the DENY policy was deleted: %v", c)
		}
		return nil
	})

	// A VirtualService edit reaches a running client: v2, then v1. The
	// edit is written once the client's first call has come back (on v2).
	routing := filepath.Join(m.mesh, "routing.yaml")
	b, _ := os.ReadFile(routing)
	edited := strings.Replace(string(b), "subset: v2}", "subset: v1}", 1)
	if edited == string(b) {
		t.Fatal("routing.yaml did not route to subset v2")
	}
	liveCtx, stopLive := context.WithTimeout(context.Background(), 90*time.Second)
	defer stopLive()
	liveCmd := exec.CommandContext(liveCtx, filepath.Join(bin, "istio-probe"), "grpc-client", "--target", target, "-n", "100", "--every", "100ms")
	liveCmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+sleep.bootstrap)
	var liveErr bytes.Buffer
	liveCmd.Stderr = &liveErr
	liveOut, err := liveCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := liveCmd.Start(); err != nil {
		t.Fatal(err)
	}
	var live []map[string]any
	for sc := bufio.NewScanner(liveOut); sc.Scan(); {
		if !strings.HasPrefix(sc.Text(), "{") {
			continue // Istio's log lines
		}
		var res map[string]any
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			t.Fatalf("istio-probe printed %q: %v", sc.Text(), err)
		}
		if live = append(live, res); len(live) == 1 {
			os.WriteFile(routing, []byte(edited), 0o644)
		}
	}
	if err := liveCmd.Wait(); err != nil || len(live) == 0 {
		t.Fatalf("grpc client during the VirtualService edit: %v (%d calls)\n%s", err, len(live), liveErr.String())
	}
	if first, last := live[0], live[len(live)-1]; first["version"] != "v2" || last["code"] != "OK" || last["version"] != "v1" {
		t.Fatalf("the running client's first call went to %v and its last to %v; want v2, then v1", first["version"], last)
	}

	// Root rotation, as an operator runs it for Istio's agents: publish,
	// wait until every agent renewed and so holds both roots (the
	// agents ask for certificates of agentCertTTL), activate, and wait
	// until every agent renewed under the new root. A client calls
	// flaskapp every 100 ms throughout, each call a new mTLS handshake
	// checked by both sides against the roots in the agents' files.
	ctx, stopCalls := context.WithCancel(context.Background())
	defer stopCalls()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "istio-probe"), "grpc-client", "--target", target, "-n", "100000", "--every", "100ms")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+sleep.bootstrap)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	startLogged(t, cmd, stopCalls, "grpc client during the rotation")
	type call struct {
		at  time.Time
		res map[string]any
	}
	var callsMu sync.Mutex
	var during []call
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			var res map[string]any
			if json.Unmarshal(s.Bytes(), &res) == nil {
				callsMu.Lock()
				during = append(during, call{time.Now(), res})
				callsMu.Unlock()
			}
		}
	}()
	callsSince := func(since time.Time) (n int) {
		callsMu.Lock()
		defer callsMu.Unlock()
		for _, c := range during {
			if c.at.After(since) {
				n++
			}
		}
		return n
	}
	waitCalls := func(since time.Time, what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for callsSince(since) < 5 {
			if time.Now().After(deadline) {
				t.Fatalf("no calls %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitCalls(time.Time{}, "before the rotation")
	rotate := func(step string) time.Time {
		t.Helper()
		at := time.Now()
		if code, _, stderr := run(t, "ca", "rotate", "--data-dir", m.data, step); code != 0 {
			t.Fatalf("ca rotate %s: %s", step, stderr)
		}
		return at
	}
	var next string // the new root's fingerprint, once published
	// every waits (three renewals at most) until each running agent's
	// files pass check.
	every := func(what string, check func(roots []string, signer string) bool) {
		t.Helper()
		deadline := time.Now().Add(40 * time.Second)
		for _, a := range agents {
			for {
				roots, signer, err := a.rootsAndSigner()
				if err == nil && check(roots, signer) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: pilot-agent %s holds roots %v, its certificate under %q (%v); the old root is %s, the new %s", what, a.name, roots, signer, err, before[0], next)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	// ca rotate asks for a step; the rotator takes it in the background.
	// Istio's secret cache sorts ROOTCA's roots (its own merge with the
	// mesh's trust anchors), so only the set and the root the default
	// certificate chains to are compared.
	published := rotate("publish")
	eventuallyCalls(t, func() error {
		_, roots, signer := cache()
		if len(roots) != 2 || !slices.Contains(roots, before[0]) || signer < 0 || roots[signer] != before[0] {
			return fmt.Errorf("after publish Istio's ROOTCA holds %v (default under root %d), want the old root %s, signing, and a new one", roots, signer, before[0])
		}
		next = roots[1-signer]
		return nil
	})
	every("after publish", func(roots []string, signer string) bool {
		return len(roots) == 2 && slices.Contains(roots, before[0]) && slices.Contains(roots, next) && signer == before[0]
	})
	waitCalls(published, "between publish and activate")
	activated := rotate("activate")
	eventuallyCalls(t, func() error {
		if _, roots, signer := cache(); len(roots) != 2 || !slices.Contains(roots, before[0]) || signer < 0 || roots[signer] != next {
			return fmt.Errorf("after activate Istio's ROOTCA holds %v (default under root %d), want the new root %s, signing, and the old one %s", roots, signer, next, before[0])
		}
		return nil
	})
	every("after activate", func(roots []string, signer string) bool { return signer == next && slices.Contains(roots, next) })
	renewed := time.Now()
	waitCalls(renewed, "once every agent's certificate was under the new root")
	stopCalls()
	afterPublish, afterActivate, afterRenewal := callsSince(published), callsSince(activated), callsSince(renewed)
	callsMu.Lock()
	defer callsMu.Unlock()
	for _, c := range during {
		if c.res["code"] != "OK" {
			t.Fatalf("a call failed during the rotation: %v", c.res)
		}
	}
	t.Logf("%d calls, none failed: %d after publish, %d after activate, %d once all four agents held certificates under the new root",
		len(during), afterPublish, afterActivate, afterRenewal)
}
