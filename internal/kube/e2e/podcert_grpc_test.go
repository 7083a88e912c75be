package e2e

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
	"github.com/wardenmesh/warden/internal/testkit"
)

// exampleDir is the example of docs/pod-certificates.md.
var exampleDir = filepath.Join(kubetest.RepoRoot(), "deploy", "examples", "pod-certificates")

// projectVolume writes what the kubelet projects into the example's
// volume: key.pem and cert-chain.pem from the credential bundle it made,
// root-cert.pem from the ClusterTrustBundle the volume selects.
func projectVolume(t *testing.T, bundleFile, trustBundle string) string {
	t.Helper()
	b, err := os.ReadFile(bundleFile)
	if err != nil {
		t.Fatal(err)
	}
	key, rest := pem.Decode(b)
	dir := t.TempDir()
	for name, data := range map[string][]byte{"key.pem": pem.EncodeToMemory(key), "cert-chain.pem": rest, "root-cert.pem": []byte(trustBundle)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// exampleDeployments renders the example and returns its Deployments.
func exampleDeployments(t *testing.T) map[string]*appsv1.Deployment {
	t.Helper()
	rendered, err := apiserver.Kubectl(t, nil, "kustomize", exampleDir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", exampleDir, err, rendered)
	}
	out := map[string]*appsv1.Deployment{}
	for _, doc := range strings.Split(rendered, "\n---\n") {
		if !strings.Contains(doc, "kind: Deployment") {
			continue
		}
		d := &appsv1.Deployment{}
		if err := yaml.UnmarshalStrict([]byte(doc), d); err != nil {
			t.Fatal(err)
		}
		out[d.Name] = d
	}
	return out
}

// TestProxylessGRPCWithPodCertificates runs the example of
// docs/pod-certificates.md (deploy/examples/pod-certificates) against
// warden as deployed: applied as it is, its pods created from its
// Deployments' templates (as their ReplicaSets would) on a node whose
// kubelet is the kubelet's own pod-certificate code, and its programs
// (warden demo server and client, proxyless gRPC on grpc-go's xDS) run
// with the arguments the templates give, their only credentials what
// their podCertificate and clusterTrustBundle volumes hold. They reach
// warden's xDS over mTLS with them and call each other over mTLS under
// the example's STRICT PeerAuthentication and an AuthorizationPolicy
// that admits the caller's SPIFFE ID alone.
func TestProxylessGRPCWithPodCertificates(t *testing.T) {
	addr, _, logs := startWardenAsDeployedAt(t, "cluster.local")
	ctx := kubetest.Context(t)
	const ns = "greeter" // the example's
	_, err := apiserver.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if out, err := apiserver.Kubectl(t, nil, "apply", "-k", exampleDir); err != nil {
		t.Fatalf("kubectl apply -k %s: %v\n%s", exampleDir, err, out)
	}
	deps := exampleDeployments(t)
	node := apiserver.Node(t, fmt.Sprintf("grpc-%d", time.Now().UnixNano()%100000))
	// An EndpointSlice may not name a loopback address: the server
	// listens on the machine's own.
	serverIP, clientIP := hostIP(t), "192.0.2.250"
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"greeter-server", "greeter-client"} {
		d := deps[name]
		if d == nil {
			t.Fatalf("the example has no Deployment %s", name)
		}
		p, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-0", Labels: d.Spec.Template.Labels},
			Spec:       *d.Spec.Template.Spec.DeepCopy(),
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.NodeName = node.Name // bound, as the scheduler binds it
		if err := apiserver.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name},
			Target: corev1.ObjectReference{Kind: "Node", Name: node.Name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	port := int32(8080)
	l, err := net.Listen("tcp", net.JoinHostPort(serverIP, "8080"))
	if err != nil {
		t.Fatalf("the example's server listens on port 8080 of %s: %v", serverIP, err)
	}
	l.Close()
	if _, err := apiserver.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "greeter-a", Labels: map[string]string{discoveryv1.LabelServiceName: "greeter"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("grpc"), Port: &port, Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{serverIP}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pods["greeter-server"].Name}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctb, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, trustbundle.Name(podcert.DefaultSigner, "cluster.local"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The programs, as the templates run them: $(VAR)s expanded, the
	// volume where the kubelet would mount it, warden where the test
	// runs it.
	args := func(name, ip string) []string {
		pod := pods[name]
		var certs string
		for _, e := range runKubelet(t, node, pod, 0) {
			if e.Event == "issued" {
				certs = projectVolume(t, e.Bundle, ctb.Spec.TrustBundle)
			}
		}
		if certs == "" {
			t.Fatalf("no credentials for %s\n%s", pod.Name, logs)
		}
		var out []string
		for _, a := range deps[name].Spec.Template.Spec.Containers[0].Args {
			a = strings.NewReplacer("$(POD_IP)", ip, "$(POD_NAME)", pod.Name, "$(POD_NAMESPACE)", ns).Replace(a)
			switch {
			case strings.HasPrefix(a, "--xds="):
				a = "--xds=" + addr
			case strings.HasPrefix(a, "--certs="):
				a = "--certs=" + certs
			case strings.HasPrefix(a, "-n="):
				a = "-n=3"
			case strings.HasPrefix(a, "--every="):
				continue
			}
			out = append(out, a)
		}
		return out
	}
	serverArgs, clientArgs := args("greeter-server", serverIP), args("greeter-client", clientIP)

	var wg sync.WaitGroup
	sctx, stop := context.WithCancel(ctx)
	t.Cleanup(func() { stop(); wg.Wait() })
	srvOut := &testkit.Buffer{}
	wg.Go(func() { app.Run(sctx, serverArgs, srvOut, srvOut) })
	kubetest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(srvOut.String(), "serving mode SERVING") {
			return fmt.Errorf("demo server %v not serving:\n%s\nwarden:\n%s", serverArgs, srvOut, logs)
		}
		return nil
	})
	out := &testkit.Buffer{}
	code := app.Run(ctx, clientArgs, out, out)
	want := fmt.Sprintf("(mTLS to spiffe://cluster.local/ns/%s/sa/greeter; server saw spiffe://cluster.local/ns/%s/sa/caller)", ns, ns)
	if code != 0 || strings.Count(out.String(), want) != 3 {
		t.Fatalf("demo client %v: %d\n%s\nwant 3 calls %s\nserver:\n%s\nwarden:\n%s", clientArgs, code, out, want, srvOut, logs)
	}
}

// hostIP is an IPv4 address of this machine other than loopback.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatal("the test needs an IPv4 address other than loopback: an EndpointSlice may not name 127.0.0.0/8")
	return ""
}
