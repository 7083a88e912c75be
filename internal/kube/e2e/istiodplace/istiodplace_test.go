// Package istiodplace walks docs/install-kubernetes.md "In istiod's
// place" on a fresh API server holding Istio's own install, rendered from
// Istio's charts by Istio's istioctl at the version warden pins
// (hack/istioctl.sh). It has an API server of its own: Istio's CRDs
// replace warden's, and the API server calls webhook Services' endpoints
// directly (aggregator routing), as nothing routes cluster IPs here.
package istiodplace

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

var apiserver kubetest.Server

func TestMain(m *testing.M) {
	kubetest.MainWith(m, &apiserver, kubetest.Options{NoCRDs: true, AggregatorRouting: true})
}

// docBlocks returns the shell blocks of a Markdown file whose fence is
// "```sh <tag>", in order, their list indentation removed.
func docBlocks(t *testing.T, file, tag string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur *strings.Builder
	indent := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```sh "+tag:
			cur, indent = &strings.Builder{}, line[:strings.Index(line, "```")]
		case cur != nil && trimmed == "```":
			out = append(out, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(strings.TrimPrefix(line, indent) + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// hostIP is an address of this machine the API server may be sent to: an
// EndpointSlice may not hold a loopback address.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatal("this machine has no non-loopback IPv4 address for the API server to call warden's webhook at")
	return ""
}

func freePort(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// kubectlDir is the folder of the kubectl the tests use.
func kubectlDir(t *testing.T) string {
	if _, err := os.Stat(filepath.Join(apiserver.Assets, "kubectl")); err == nil {
		return apiserver.Assets
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal("kubectl is required (hack/kube-binaries.sh builds it when the machine has none)")
	}
	return filepath.Dir(p)
}

// sh runs a script with bash (errexit, pipefail) in dir, with kubectl,
// istioctl and the test API server's kubeconfig, as an operator would.
func sh(t *testing.T, dir, script string, path ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+apiserver.Kubeconfig,
		"PATH="+strings.Join(append(path, os.Getenv("PATH")), string(os.PathListSeparator)))
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// istiodRoot is istio-ca-secret as istiod writes it (self-signed root in
// ca-cert.pem and ca-key.pem, the other keys empty), and the root.
func istiodRoot(t *testing.T) (*corev1.Secret, []byte) {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{CommonName: "Istio CA", Organization: "cluster.local", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	f, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-secret", Namespace: "istio-system"}, Type: "istio.io/ca-root",
		Data: map[string][]byte{"ca-cert.pem": f.CACert, "ca-key.pem": f.CAKey, "cert-chain.pem": {}, "key.pem": {}, "root-cert.pem": {}}}, f.CACert
}

// TestInIstiodsPlace: Istio as its charts install it, istiod having run
// (its CA Secret, its webhooks failing closed with its root as caBundle,
// an injection-enabled namespace with a workload), then every ```sh
// migrate block of docs/install-kubernetes.md in order, with kubectl and
// istioctl; warden serve runs in this process where the docs apply
// deploy/istiod-compat, with the Deployment's arguments (listen addresses
// changed to free ports, and an EndpointSlice for warden's Service written
// as the EndpointSlice controller would: no pod runs here). It ends with
// Istio configuration admitted by warden and refused with warden's
// messages, and an injected pod admitted in the injection-enabled
// namespace.
func TestInIstiodsPlace(t *testing.T) {
	istioctl := os.Getenv("WARDEN_ISTIOCTL")
	if istioctl == "" {
		t.Fatal("WARDEN_ISTIOCTL is not set: run make test, or export WARDEN_ISTIOCTL=$(hack/istioctl.sh)")
	}
	ctx := kubetest.Context(t)
	cs := apiserver.Client
	work := t.TempDir()
	path := []string{filepath.Dir(istioctl), kubectlDir(t)}
	run := func(script string) string {
		t.Helper()
		out, err := sh(t, work, script, path...)
		if err != nil {
			t.Fatalf("%v\n--- script\n%s--- output\n%s", err, script, out)
		}
		return out
	}
	// The deploy/ the docs apply, beside the files the steps write.
	if out, err := exec.Command("cp", "-r", filepath.Join(kubetest.RepoRoot(), "deploy"), work).CombinedOutput(); err != nil {
		t.Fatalf("cp deploy: %v\n%s", err, out)
	}

	// Istio's install, from its own charts.
	run(`istioctl manifest generate --set values.defaultRevision=default > istio.yaml
kubectl create namespace istio-system
kubectl apply --server-side -f istio.yaml >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null`)
	vwcs := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	mwcs := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	for _, name := range []string{"istiod-default-validator", "istio-validator-istio-system"} {
		w, err := vwcs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Istio's chart has no %s: %v", name, err)
		}
		if s := w.Webhooks[0].ClientConfig.Service; s == nil || s.Name != "istiod" || s.Namespace != "istio-system" {
			t.Fatalf("%s calls %+v", name, s)
		}
	}

	// What istiod did while it ran: its root in istio-ca-secret, its
	// validation controller's caBundle and failurePolicy Fail, its
	// injector's caBundle, the bundle ConfigMaps; an injection-enabled
	// namespace with a workload istiod injected pods of.
	secret, root := istiodRoot(t)
	if _, err := cs.CoreV1().Secrets("istio-system").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fail := admregv1.Fail
	for _, name := range []string{"istiod-default-validator", "istio-validator-istio-system"} {
		w, _ := vwcs.Get(ctx, name, metav1.GetOptions{})
		for i := range w.Webhooks {
			w.Webhooks[i].ClientConfig.CABundle = root
			w.Webhooks[i].FailurePolicy = &fail
		}
		if _, err := vwcs.Update(ctx, w, metav1.UpdateOptions{FieldManager: "pilot-discovery"}); err != nil {
			t.Fatal(err)
		}
	}
	inj, err := mwcs.Get(ctx, "istio-sidecar-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range inj.Webhooks {
		inj.Webhooks[i].ClientConfig.CABundle = root
	}
	if _, err := mwcs.Update(ctx, inj, metav1.UpdateOptions{FieldManager: "pilot-discovery"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "root-cert.pem"), root, 0o644); err != nil {
		t.Fatal(err)
	}
	run(`kubectl create namespace shop
kubectl label namespace shop istio-injection=enabled
kubectl create serviceaccount reviews -n shop
kubectl create configmap istio-ca-root-cert -n shop --from-file=root-cert.pem
kubectl create deployment reviews -n shop --image=example.org/reviews:v1`)

	// Before: a pod in the injection-enabled namespace, and Istio
	// configuration, are refused: nothing answers for istiod.
	if out, err := sh(t, work, "kubectl run before -n shop --image=example.org/app --restart=Never", path...); err == nil || !strings.Contains(out, `failed calling webhook "namespace.sidecar-injector.istio.io"`) {
		t.Fatalf("a pod was admitted with istiod gone (%v):\n%s", err, out)
	}

	// The migration, as the docs give it.
	blocks := docBlocks(t, filepath.Join(kubetest.RepoRoot(), "docs", "install-kubernetes.md"), "migrate")
	if len(blocks) < 6 {
		t.Fatalf("docs/install-kubernetes.md has %d blocks tagged migrate", len(blocks))
	}
	var logs *testkit.Buffer
	started := false
	for i, b := range blocks {
		t.Logf("step %d:\n%s", i+1, b)
		run(b)
		if strings.Contains(b, "kubectl apply -k deploy/istiod-compat") {
			logs = startWarden(t, ctx)
			started = true
		}
	}
	if !started {
		t.Fatal("no migrate block applies deploy/istiod-compat")
	}

	// Istio's validating webhooks call warden and trust its root (the
	// one istiod had: warden took over its CA).
	for _, name := range []string{"istiod-default-validator", "istio-validator-istio-system"} {
		w, err := vwcs.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		h := w.Webhooks[0]
		if s := h.ClientConfig.Service; s.Name != "warden" || s.Namespace != "warden-system" || *s.Port != 443 || *s.Path != "/validate" || !bytes.Equal(h.ClientConfig.CABundle, root) || *h.FailurePolicy != admregv1.Fail {
			t.Errorf("%s: service %+v, failurePolicy %v, caBundle is the root: %v", name, s, *h.FailurePolicy, bytes.Equal(h.ClientConfig.CABundle, root))
		}
	}
	if _, err := mwcs.Get(ctx, "istio-sidecar-injector", metav1.GetOptions{}); err == nil {
		t.Error("the injection webhook is still there")
	}

	// Istio configuration is admitted by warden, and refused with its
	// messages: the API server called warden's webhook over TLS.
	run(`kubectl apply -f - <<'EOF'
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
  labels:
    istio.io/rev: default
spec:
  mtls:
    mode: STRICT
EOF`)
	if _, err := cs.CoreV1().RESTClient().Get().AbsPath("/apis/security.istio.io/v1/namespaces/shop/peerauthentications/default").DoRaw(ctx); err != nil {
		t.Fatalf("the PeerAuthentication is not there: %v", err)
	}
	for _, c := range []struct{ manifest, want string }{
		{`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: dry
  namespace: shop
  annotations:
    istio.io/dry-run: "true"
spec:
  mtls:
    mode: STRICT
`, `admission webhook "validation.istio.io" denied the request: configuration is invalid: shop/dry has unsupported annotation istio.io/dry-run, please remove the annotation`},
		{`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: everyone
  namespace: shop
spec:
  rules:
  - from:
    - source: {}
`, `admission webhook "validation.istio.io" denied the request: configuration is invalid: AuthorizationPolicy shop/everyone: spec.rules[0].from[0].source: must not be empty (it would match every caller; leave out from instead)`},
	} {
		out, err := sh(t, work, "kubectl apply -f - <<'EOF'\n"+c.manifest+"EOF", path...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("kubectl apply (%v):\n%s\nwant %q", err, out, c.want)
		}
	}
	if !strings.Contains(logs.String(), "refused configuration") {
		t.Errorf("warden logged no refusal:\n%s", logs)
	}
	// warden serves what it admitted: its configuration watcher does not
	// wait for the legacy kinds Istio's CRDs lack.
	kubetest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(logs.String(), `msg="mesh configuration applied" objects=1 `) {
			return fmt.Errorf("warden has not applied the PeerAuthentication:\n%s", logs)
		}
		return nil
	})
	if !strings.Contains(logs.String(), `kinds="policies.authentication.istio.io, meshpolicies.authentication.istio.io`) {
		t.Errorf("the kinds Istio's CRDs lack are not named:\n%s", logs)
	}

	// warden check finds the webhooks calling warden with its root, and
	// nothing wrong elsewhere.
	kubetest.Eventually(t, 30*time.Second, func() error {
		var out bytes.Buffer
		code := app.Run(ctx, []string{"check", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", "warden-system"}, &out, &out)
		if code != 0 || !strings.Contains(out.String(), "2 validating webhooks call warden and trust its root") {
			return fmt.Errorf("warden check: exit %d\n%s", code, out.String())
		}
		return nil
	})

	// The workload's template carries its sidecar (step 4), and a pod
	// injected the same way is admitted in the injection-enabled
	// namespace, with its sidecar.
	d, err := cs.AppsV1().Deployments("shop").Get(ctx, "reviews", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasContainer(d.Spec.Template.Spec.Containers, "istio-proxy") || d.Spec.Template.Annotations["sidecar.istio.io/status"] == "" {
		t.Errorf("reviews' template was not injected: %+v", d.Spec.Template)
	}
	run(`kubectl run ratings -n shop --image=example.org/ratings --restart=Never --overrides='{"spec":{"serviceAccountName":"reviews"}}' --dry-run=client -o yaml |
  istioctl kube-inject -f - --injectConfigFile istio-injection/config.yaml --valuesFile istio-injection/values.json --meshConfigFile istio-injection/mesh.yaml |
  kubectl apply -f -`)
	pod, err := cs.CoreV1().Pods("shop").Get(ctx, "ratings", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasContainer(pod.Spec.Containers, "istio-proxy") {
		t.Errorf("the pod has no sidecar: %+v", pod.Spec.Containers)
	}
	var env []string
	for _, c := range pod.Spec.Containers {
		if c.Name == "istio-proxy" {
			for _, e := range c.Env {
				if e.Name == "CA_ADDR" || e.Name == "PROXY_CONFIG" {
					env = append(env, e.Name+"="+e.Value)
				}
			}
		}
	}
	if got := strings.Join(env, " "); !strings.Contains(got, "istiod.istio-system.svc:15012") {
		t.Errorf("the sidecar does not dial istiod's name, which warden serves: %s", got)
	}
}

func hasContainer(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

// startWarden runs warden serve as deploy/istiod-compat's Deployment
// would: its container's arguments, with free ports for the listen
// addresses (the webhook's on this machine's address), this API server's
// kubeconfig, and the namespace the pod would have; and writes the
// EndpointSlice of warden's Service the EndpointSlice controller would
// write for the pod.
func startWarden(t *testing.T, ctx context.Context) *testkit.Buffer {
	t.Helper()
	cs := apiserver.Client
	d, err := cs.AppsV1().Deployments("warden-system").Get(ctx, "warden", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("deploy/istiod-compat's Deployment: %v", err)
	}
	caAddr, hookAddr := testkit.FreeAddr(t), freePort(t, hostIP(t))
	var args []string
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		switch name, _, _ := strings.Cut(a, "="); name {
		case "--listen":
			a = "--listen=" + caAddr
		case "--http-listen":
			a = "--http-listen=" + testkit.FreeAddr(t)
		case "--webhook-listen":
			a = "--webhook-listen=" + hookAddr
		}
		args = append(args, a)
	}
	if !strings.Contains(strings.Join(args, " "), "--webhook-listen=") {
		t.Fatalf("deploy/istiod-compat runs warden without --webhook-listen: %v", args)
	}
	args = append(args, "--kubeconfig", apiserver.Kubeconfig, "--namespace", "warden-system", "--replica-id", "warden-0")
	t.Logf("warden %s", strings.Join(args, " "))
	runCtx, cancel := context.WithCancel(context.Background())
	logs := &testkit.Buffer{}
	done := make(chan int, 1)
	go func() { done <- app.Run(runCtx, args, logs, logs) }()
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("warden serve exited %d:\n%s", code, logs)
			}
		})
	})
	kubetest.Eventually(t, 30*time.Second, func() error {
		select {
		case code := <-done:
			done <- code
			return fmt.Errorf("warden serve exited %d", code)
		default:
		}
		return testkit.Serving(caAddr)
	})
	host, port, _ := net.SplitHostPort(hookAddr)
	var p int32
	fmt.Sscan(port, &p)
	name, proto, ready := "https-webhook", corev1.ProtocolTCP, true
	if _, err := cs.DiscoveryV1().EndpointSlices("warden-system").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "warden-0", Labels: map[string]string{discoveryv1.LabelServiceName: "warden"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &p, Protocol: &proto}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "warden-system", Name: "warden-0", UID: types.UID("warden-0")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return logs
}
