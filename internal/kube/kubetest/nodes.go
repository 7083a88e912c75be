package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Node is a Node object with the credentials of its kubelet (no kubelet
// runs): user system:node:<name> in group system:nodes, which the Node
// authorizer and NodeRestriction hold to that node (Options.Nodes).
type Node struct {
	*corev1.Node
	Config     *rest.Config
	Client     kubernetes.Interface
	Kubeconfig string // a kubeconfig file of the same credentials
}

// Node creates Node name and its kubelet's credentials.
func (s *Server) Node(t testing.TB, name string) *Node {
	t.Helper()
	n, err := s.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.env.ControlPlane.AddUser(envtest.User{Name: "system:node:" + name, Groups: []string{"system:nodes"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubelet-"+name+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = 200, 400
	return &Node{Node: n, Config: cfg, Client: kubernetes.NewForConfigOrDie(cfg), Kubeconfig: path}
}

// CertificateVolume is the projected volume a pod mounts to get a
// certificate from signer: the kubelet's key and chain (podCertificate,
// key.pem and cert-chain.pem) and the signer's ClusterTrustBundles
// (root-cert.pem, selected by signer and, when set, labels).
func CertificateVolume(signer string, labels map[string]string) corev1.Volume {
	return corev1.Volume{Name: "pod-cert", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
		{PodCertificate: &corev1.PodCertificateProjection{SignerName: signer, KeyType: "ECDSAP256", KeyPath: "key.pem", CertificateChainPath: "cert-chain.pem"}},
		{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{SignerName: &signer, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}, Path: "root-cert.pem"}},
	}}}}
}

// Pod creates pod name in ns, running as service account sa (created if
// absent), bound to node, mounting CertificateVolume(signer), changed by
// mods before it is created.
func (s *Server) Pod(t testing.TB, ns, name, sa, node, signer string, mods ...func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		s.ServiceAccount(t, ns, sa)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": sa}},
		Spec: corev1.PodSpec{
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: ptr(false),
			NodeName:                     node,
			Containers: []corev1.Container{{Name: "app", Image: "example.org/app:1",
				VolumeMounts: []corev1.VolumeMount{{Name: "pod-cert", MountPath: "/var/run/warden", ReadOnly: true}}}},
			Volumes: []corev1.Volume{CertificateVolume(signer, map[string]string{})},
		},
	}
	for _, m := range mods {
		m(p)
	}
	p, err := s.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// WardenNamespace is where deploy/warden installs warden; its RBAC names
// the service account warden there.
const WardenNamespace = "warden-system"

// Warden applies deploy/warden/rbac.yaml as an operator would and returns
// the credentials of its service account (warden-system/warden, a
// TokenRequest token): exactly the deploy RBAC, nothing more. The
// ClusterRole is applied again by every call, so a test that ran before
// and changed it does not matter.
func (s *Server) Warden(t testing.TB) (cfg *rest.Config, kubeconfig string) {
	t.Helper()
	_, err := s.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: WardenNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if out, err := s.Kubectl(t, nil, "apply", "-n", WardenNamespace, "-f", filepath.Join(RepoRoot(), "deploy", "warden", "rbac.yaml")); err != nil {
		t.Fatalf("kubectl apply deploy/warden/rbac.yaml: %v\n%s", err, out)
	}
	token := s.Token(t, WardenNamespace, "warden")
	cfg = rest.AnonymousClientConfig(s.Config)
	cfg.BearerToken = token
	cfg.QPS, cfg.Burst = s.Config.QPS, s.Config.Burst
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["warden"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["warden"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "warden"}
	kc.CurrentContext = "warden"
	kubeconfig = filepath.Join(t.TempDir(), "warden.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return cfg, kubeconfig
}
