package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestServeKubernetesZtunnel: 'warden serve --kubernetes' serves ambient's
// ztunnel as istiod does with CA_TRUSTED_NODE_ACCOUNTS: ztunnel's pod
// token (kubectl create token --bound-object-kind Pod) and clusterid
// get the certificate of a pod on its node, not of one elsewhere; the
// outcomes are counted. With --trusted-node-accounts "" no node account
// is trusted.
func TestServeKubernetesZtunnel(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	zns, app := apiserver.Namespace(t, "istio-system"), apiserver.Namespace(t, "app")
	httpAddr := testkit.FreeAddr(t)
	addr, logs, _ := startServeWith(t, ns, "replica-a", "--http-listen", httpAddr,
		"--trusted-node-accounts", zns+"/ztunnel", "--cluster-id", "cluster-a")
	zt := runPod(t, zns, "ztunnel-1", "ztunnel", "node-1")
	runPod(t, app, "web-1", "web", "node-1")
	runPod(t, app, "db-1", "db", "node-2")
	out, err := apiserver.Kubectl(t, nil, "create", "token", "ztunnel", "-n", zns, "--audience", "istio-ca",
		"--bound-object-kind", "Pod", "--bound-object-name", zt.Name, "--bound-object-uid", string(zt.UID))
	if err != nil {
		t.Fatal(out)
	}
	tok := strings.TrimSpace(out)
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ca.ParseCerts(sec.Data["root-cert.pem"])
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	caClient := pb.NewIstioCertificateServiceClient(conn)
	askFor := func(id string) (*pb.IstioCertificateResponse, error) {
		md, _ := structpb.NewStruct(map[string]any{"ImpersonatedIdentity": id})
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok, "clusterid", "cluster-a")
		return caClient.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: ztunnelCSR(t, id), ValidityDuration: 86400, Metadata: md})
	}
	web := catest.ID(app, "web").String()
	var res *pb.IstioCertificateResponse
	// The pods may reach warden's index a moment after the API server.
	kubetest.Eventually(t, 30*time.Second, func() error { res, err = askFor(web); return err })
	leaf, _ := ca.ParseCerts([]byte(res.CertChain[0]))
	if len(res.CertChain) != 2 || len(leaf) != 1 || leaf[0].URIs[0].String() != web {
		t.Fatalf("answer: %d elements, leaf %v", len(res.CertChain), leaf)
	}
	_, err = askFor(catest.ID(app, "db").String())
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || st.Message() != "request impersonation authentication failure (not_on_node)" {
		t.Fatalf("db, on another node: %v", err)
	}
	m := scrape(t, httpAddr)
	for series, want := range map[string]float64{
		"warden_ca_impersonations_total":                               1,
		`warden_ca_impersonations_refused_total{reason="not_on_node"}`: 1,
		`warden_ca_impersonations_refused_total{reason="untrusted"}`:   0,
		"citadel_server_authentication_failure_count":                  1,
		"citadel_server_success_cert_issuance_count":                   1,
	} {
		if m[series] != want {
			t.Errorf("%s = %v, want %v", series, m[series], want)
		}
	}
	if want := `msg="node authorization: these node proxies may ask for the certificates of the pods on their node" accounts=` + zns + "/ztunnel cluster=cluster-a"; !strings.Contains(logs.String(), want) {
		t.Errorf("no %q in\n%s", want, logs.String())
	}

	// Trusting no node account: the request for another identity is
	// refused as before (SelfOnly).
	ns2 := apiserver.Namespace(t, "warden")
	addr2, _, _ := startServeWith(t, ns2, "replica-b", "--trusted-node-accounts", "")
	sec2, err := apiserver.Client.CoreV1().Secrets(ns2).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots2, _ := ca.ParseCerts(sec2.Data["root-cert.pem"])
	pool2 := x509.NewCertPool()
	pool2.AddCert(roots2[0])
	conn2, err := grpc.NewClient(addr2, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool2, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn2.Close() })
	caClient = pb.NewIstioCertificateServiceClient(conn2)
	_, err = askFor(web)
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "this CA issues a caller's own identity only") {
		t.Fatalf("with no node account trusted: %v", err)
	}
}

// runPod creates a pod of account sa (made too) scheduled on node.
func runPod(t *testing.T, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	apiserver.ServiceAccount(t, ns, sa)
	p, err := apiserver.Client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ztunnelCSR is a CSR as ztunnel makes it: ECDSA P-256, an empty
// subject, one critical subjectAltName holding the identity.
func ztunnelCSR(t *testing.T, id string) string {
	t.Helper()
	u, _ := url.Parse(id)
	san := catest.SANExtension([]*url.URL{u}, nil, nil, nil)
	san.Critical = true
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{san}}, catest.Key(t, ca.ECDSAP256))
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
