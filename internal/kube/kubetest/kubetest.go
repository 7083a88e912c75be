// Package kubetest runs a real Kubernetes API server for tests, as
// ca/vault/vaulttest runs a real Vault: the kube-apiserver and etcd that
// hack/kube-binaries.sh builds and caches, started on loopback by
// controller-runtime's envtest once per test binary (Main, from
// TestMain), with warden's CRDs installed, a static token for a plain
// user (UserToken) and an admin kubeconfig for kubectl and warden's
// --kubeconfig. Each test works in namespaces of its own.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// UserToken authenticates as the plain (non service account) user alice.
const UserToken = "alice-static-token-for-tests"

// Server is the API server the tests of one binary share.
type Server struct {
	Config     *rest.Config         // envtest's administrator, at warden's client rate limits
	Client     kubernetes.Interface // from Config
	Kubeconfig string               // an admin (system:masters) kubeconfig file, for kubectl and warden
	Assets     string               // $KUBEBUILDER_ASSETS: kube-apiserver, etcd, and kubectl when built

	env *envtest.Environment
}

// RepoRoot is the warden checkout.
func RepoRoot() string { return testkit.RepoRoot() }

// Main starts the API server, fills in s, runs the tests and exits with
// their result. Call it from TestMain.
func Main(m *testing.M, s *Server) {
	os.Exit(run(m, s, Options{}))
}

// Options change the API server of a test binary that needs another.
type Options struct {
	// NoCRDs starts without warden's CRDs (a test that installs
	// Istio's own).
	NoCRDs bool
	// AggregatorRouting has the API server call a webhook Service's
	// endpoints (its EndpointSlices) instead of its cluster IP, which
	// nothing routes without kube-proxy: webhooks that name a Service
	// work without cluster DNS.
	AggregatorRouting bool
	// Nodes starts it as a cluster with kubelets runs:
	// --authorization-mode=Node,RBAC and the NodeRestriction admission
	// plugin, so that a node's client (Server.Node) may do what a kubelet
	// may, and no more.
	Nodes bool
}

// MainWith is Main with options.
func MainWith(m *testing.M, s *Server, o Options) {
	os.Exit(run(m, s, o))
}

func run(m *testing.M, s *Server, o Options) int {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run 'make test', or export KUBEBUILDER_ASSETS=$(hack/kube-binaries.sh)")
		return 1
	}
	dir, err := os.MkdirTemp("", "warden-kube-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(UserToken+",alice,alice-uid,developers\n"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	if !o.NoCRDs {
		env.CRDDirectoryPaths = crdDirs()
	}
	env.ControlPlane.GetAPIServer().Configure().Set("token-auth-file", tokens)
	if o.AggregatorRouting {
		env.ControlPlane.GetAPIServer().Configure().Set("enable-aggregator-routing", "true")
	}
	if o.Nodes {
		env.ControlPlane.GetAPIServer().Configure().
			Set("authorization-mode", "Node,RBAC").
			Set("enable-admission-plugins", "NodeRestriction")
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	defer env.Stop()
	cfg.QPS, cfg.Burst = 200, 400
	admin, err := env.ControlPlane.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest user:", err)
		return 1
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest kubeconfig:", err)
		return 1
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*s = Server{Config: cfg, Client: kubernetes.NewForConfigOrDie(cfg), Kubeconfig: kubeconfig, Assets: assets, env: env}
	return m.Run()
}

// crdDirs installs warden's CRDs when the repository has them.
func crdDirs() []string {
	d := filepath.Join(RepoRoot(), "deploy", "crds")
	if _, err := os.Stat(d); err == nil {
		return []string{d}
	}
	return nil
}

// Namespace creates a namespace named prefix-<random>.
func (s *Server) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns, err := s.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// ServiceAccount creates service account ns/name.
func (s *Server) ServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	sa, err := s.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sa
}

// Token is a token of service account ns/sa for audiences aud, an hour
// long, from the TokenRequest API (as the kubelet mounts them).
func (s *Server) Token(t testing.TB, ns, sa string, aud ...string) string {
	t.Helper()
	exp := int64(3600)
	tr, err := s.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// Kubectl runs the kubectl a user would run against the server.
func (s *Server) Kubectl(t testing.TB, stdin []byte, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(s.Assets, "kubectl")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("kubectl"); err != nil {
			t.Fatal("kubectl is required (hack/kube-binaries.sh builds it when the machine has none)")
		}
	}
	cmd := exec.Command(bin, append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Eventually polls cond until it returns nil or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	testkit.Eventually(t, timeout, cond)
}

// Context is cancelled when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}
