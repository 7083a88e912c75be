package tokenreview_test

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/tokenreview"
)

// caServer serves a CA authenticating with TokenReview against the test
// API server, over gRPC+TLS on loopback.
func caServer(t testing.TB, auth *tokenreview.Authenticator) *client.Client {
	t.Helper()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	srv, err := server.New(server.Config{Signer: a, Authenticators: []server.Authenticator{auth}})
	if err != nil {
		t.Fatal(err)
	}
	serving := &server.ServingCert{Authority: a, Options: ca.ServingOptions{ID: catest.ID("warden-system", "warden"), IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}}
	g := grpc.NewServer(server.Credentials(serving))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	roots := x509.NewCertPool()
	roots.AddCert(a.Material().Roots[0])
	c, err := client.New(client.Config{Addr: lis.Addr().String(), Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTokenReviewIdentities(t *testing.T) {
	apiserver.ServiceAccount(t, "default", "sleep")
	ns := apiserver.Namespace(t, "tr")
	apiserver.ServiceAccount(t, ns, "flaskapp")
	apiserver.ServiceAccount(t, ns, "doomed")
	auth := &tokenreview.Authenticator{Client: apiserver.Client, TrustDomain: catest.TrustDomain}
	c := caServer(t, auth)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := c.Request(ctx, client.Request{Token: apiserver.Token(t, "default", "sleep", "istio-ca")})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.ID.String(); got != "spiffe://cluster.local/ns/default/sa/sleep" {
		t.Fatalf("issued %s", got)
	}
	// The sleep token cannot get flaskapp's identity.
	_, err = c.Request(ctx, client.Request{Token: apiserver.Token(t, "default", "sleep", "istio-ca"), ID: catest.ID(ns, "flaskapp")})
	wantCode(t, err, codes.PermissionDenied, "but the caller is spiffe://cluster.local/ns/default/sa/sleep")

	doomed := apiserver.Token(t, ns, "doomed", "istio-ca")
	if err := apiserver.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, tok, msg string }{
		{"other audience", apiserver.Token(t, ns, "flaskapp", "vault"), "tokenreview: token rejected for audiences [istio-ca]"},
		{"deleted service account", doomed, "tokenreview: token rejected for audiences [istio-ca]"},
		{"user token", kubetest.UserToken, "tokenreview: token rejected for audiences [istio-ca]: invalid bearer token"},
		{"garbage", "garbage", "tokenreview: token rejected"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Request(ctx, client.Request{Token: tc.tok})
			wantCode(t, err, codes.Unauthenticated, tc.msg)
		})
	}
	// Were the API server's own audience accepted, a plain user's token
	// would pass TokenReview; it is still not a service account.
	apiAud := &tokenreview.Authenticator{Client: apiserver.Client, TrustDomain: catest.TrustDomain, Audiences: []string{strings.TrimSuffix(apiserver.Config.Host, "/") + "/"}}
	md := metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+kubetest.UserToken))
	_, err = apiAud.Authenticate(md)
	if want := `tokenreview: user "alice" is not a service account (not in group system:serviceaccounts)`; err == nil || err.Error() != want {
		t.Fatalf("user token with the API audience: %v, want %q", err, want)
	}
	if n := auth.Cache.Len(); n != 2 {
		t.Errorf("%d tokens cached, want the 2 accepted ones", n)
	}
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("err = %v\nwant %s containing %q", err, code, msg)
	}
}

// TestTokenReviewForbiddenIsUnavailable: warden without the RBAC to create
// TokenReviews (here: a user with no role) cannot judge a token: the
// workload is answered Unavailable, with the missing grant named, not
// Unauthenticated as for a forged token.
func TestTokenReviewForbiddenIsUnavailable(t *testing.T) {
	ns := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, ns, "sleep")
	cfg := rest.CopyConfig(apiserver.Config)
	cfg.CertData, cfg.KeyData, cfg.CertFile, cfg.KeyFile = nil, nil, "", ""
	cfg.BearerToken = kubetest.UserToken
	c := caServer(t, &tokenreview.Authenticator{Client: kubernetes.NewForConfigOrDie(cfg), TrustDomain: catest.TrustDomain})
	_, err := c.Request(kubetest.Context(t), client.Request{Token: apiserver.Token(t, ns, "sleep", "istio-ca")})
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "warden may not create TokenReviews") || !strings.Contains(st.Message(), "grant it create on tokenreviews.authentication.k8s.io") {
		t.Fatalf("a TokenReview warden may not create: %v, want Unavailable naming the grant", err)
	}
}

// TestTokenReviewNamesThePod: a token bound to a pod (the TokenRequest
// API's BoundObjectRef, as the kubelet's projected token is) names the
// pod in the caller, from the review's extras; a token bound to nothing
// names the account only.
func TestTokenReviewNamesThePod(t *testing.T) {
	ctx := context.Background()
	ns := apiserver.Namespace(t, "pods")
	apiserver.ServiceAccount(t, ns, "ztunnel")
	pod, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ztunnel-x"},
		Spec: corev1.PodSpec{ServiceAccountName: "ztunnel", NodeName: "n1",
			Containers: []corev1.Container{{Name: "z", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tr, err := apiserver.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ztunnel", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	auth := &tokenreview.Authenticator{Client: apiserver.Client, TrustDomain: catest.TrustDomain}
	for _, c := range []struct {
		name, tok string
		want      server.KubernetesCaller
	}{
		{"bound to a pod", tr.Status.Token, server.KubernetesCaller{Namespace: ns, ServiceAccount: "ztunnel", PodName: "ztunnel-x", PodUID: string(pod.UID)}},
		{"bound to nothing", apiserver.Token(t, ns, "ztunnel", "istio-ca"), server.KubernetesCaller{Namespace: ns, ServiceAccount: "ztunnel"}},
	} {
		for _, from := range []string{"review", "cache"} {
			c2, err := auth.Authenticate(metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+c.tok)))
			if err != nil {
				t.Fatalf("%s (%s): %v", c.name, from, err)
			}
			if c2.Kubernetes == nil || *c2.Kubernetes != c.want || c2.ID != catest.ID(ns, "ztunnel") {
				t.Errorf("%s (%s): caller %s %+v, want %+v", c.name, from, c2.ID, c2.Kubernetes, c.want)
			}
		}
	}
}
