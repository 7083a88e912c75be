package nodeauth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
)

// node is a ztunnel on node "n1" in a namespace of its own (trusted), a
// workload pod beside it, and warden's CA with the node authorizer.
type node struct {
	zns, app string
	zt       *corev1.Pod
	tok      string
	f        *caFixture
	na       *nodeauth.Authorizer
	seen     *reasons
}

const cluster = "Kubernetes"

// reasons records what the authorizer's Observe hears.
type reasons struct {
	mu  sync.Mutex
	got []string
}

func (r *reasons) observe(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if reason == "" {
		reason = "allowed"
	}
	r.got = append(r.got, reason)
}

func (r *reasons) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := &node{zns: apiserver.Namespace(t, "istio-system"), app: apiserver.Namespace(t, "app"), seen: &reasons{}}
	n.zt = createPod(t, podSpec{"ztunnel-x1", n.zns, "ztunnel", "n1"})
	createPod(t, podSpec{"web-1", n.app, "web", "n1"})
	n.tok = podToken(t, n.zt)
	n.na = authorizer(t, cluster, nodeauth.Account{Namespace: n.zns, Name: "ztunnel"})
	n.na.Observe = n.seen.observe
	n.f = newCA(t, n.na)
	return n
}

// askFor is ztunnel's request for identity with token tok over a
// connection presenting cert (nil: none).
func (n *node) askFor(t *testing.T, tok string, cert *tls.Certificate, identity string, ttl int64) error {
	t.Helper()
	csr, key := ztunnelCSR(t, identity)
	res, err := ask(ctxT(t), n.f.client(t, cert), tok, cluster, identity, csr, ttl)
	if err == nil {
		checkZtunnelAnswer(t, n.f, res, key, identity)
	}
	return err
}

// TestMTLSCallerCannotImpersonate: ztunnel renewing over mTLS with its
// own certificate (no token) cannot ask for another identity, even one
// its token may have: only a token names the caller's pod.
func TestMTLSCallerCannotImpersonate(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	own := identity(n.zns, "ztunnel")
	csr, key := ztunnelCSR(t, own)
	res, err := ask(ctxT(t), n.f.client(t, nil), n.tok, cluster, "", csr, 3600)
	if err != nil {
		t.Fatal(err)
	}
	leaf := checkZtunnelAnswer(t, n.f, res, key, own)
	svid := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	web := identity(n.app, "web")
	err = n.askFor(t, "", svid, web, 3600)
	wantRefused(t, n.f, err, nodeauth.ReasonUntrusted, "authenticated by mtls, is not allowed to impersonate")
	// Its renewal of its own identity over mTLS is served, as always.
	if err := n.askFor(t, "", svid, own, 3600); err != nil {
		t.Fatalf("renewing its own identity over mTLS: %v", err)
	}
	// The same ask with its pod's token is served.
	if err := n.askFor(t, n.tok, nil, web, 3600); err != nil {
		t.Fatalf("with its token: %v (%v)", err, n.f.authz.last())
	}
	if got, want := n.seen.list(), []string{nodeauth.ReasonUntrusted, "allowed"}; !slices.Equal(got, want) {
		t.Errorf("observed %v, want %v (a request for its own identity is no impersonation)", got, want)
	}
}

// TestUntrustedAccountCannotImpersonate: a workload's pod-bound token on
// the same node is not a node account's; a trusted account's token bound
// to no pod names no node.
func TestUntrustedAccountCannotImpersonate(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	sleep := createPod(t, podSpec{"sleep-1", n.app, "sleep", "n1"})
	err := n.askFor(t, podToken(t, sleep), nil, identity(n.app, "web"), 3600)
	wantRefused(t, n.f, err, nodeauth.ReasonUntrusted, "is not allowed to impersonate")
	// Naming its own identity there is its own request.
	if err := n.askFor(t, podToken(t, sleep), nil, identity(n.app, "sleep"), 3600); err != nil {
		t.Fatalf("its own identity in ImpersonatedIdentity: %v", err)
	}
	out, err := apiserver.Kubectl(t, nil, "create", "token", "ztunnel", "-n", n.zns, "--audience", "istio-ca")
	if err != nil {
		t.Fatal(out)
	}
	err = n.askFor(t, strings.TrimSpace(out), nil, identity(n.app, "web"), 3600)
	wantRefused(t, n.f, err, nodeauth.ReasonPodNotFound, "the caller's token is bound to no pod")
}

// TestNoPodOnTheNode: a trusted ztunnel cannot get an identity no pod on
// its node runs as, though pods of it run elsewhere; a Failed pod on its
// node does not count, a running one does.
func TestNoPodOnTheNode(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	createPod(t, podSpec{"db-1", n.app, "db", "n2"})
	db := identity(n.app, "db")
	wantRefused(t, n.f, n.askFor(t, n.tok, nil, db, 3600), nodeauth.ReasonNotOnNode, `no instances of "`+n.app+`/db" found on node "n1"`)
	failPod(t, createPod(t, podSpec{"db-2", n.app, "db", "n1"}))
	wantRefused(t, n.f, n.askFor(t, n.tok, nil, db, 3600), nodeauth.ReasonNotOnNode, "no instances")
	createPod(t, podSpec{"db-3", n.app, "db", "n1"})
	if err := n.askFor(t, n.tok, nil, db, 3600); err != nil {
		t.Fatalf("with db-3 running on n1: %v (%v)", err, n.f.authz.last())
	}
	// A pod that leaves the node takes the identity with it.
	grace := int64(0)
	if err := apiserver.Client.CoreV1().Pods(n.app).Delete(context.Background(), "db-3", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for n.na.Pods.OnNode(n.app, "db", "n1") != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	wantRefused(t, n.f, n.askFor(t, n.tok, nil, db, 3600), nodeauth.ReasonNotOnNode, "no instances")
}

// TestTokenForAnotherPodUID: a token names its pod's UID. The API server
// mints none for a UID that is not the pod's; the token of a pod made
// again under the same name is refused: by the node authorizer when its
// review is cached (the UID no longer matches), by the TokenReview when
// it was never reviewed.
func TestTokenForAnotherPodUID(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if _, err := podTokenErr(t, "ztunnel", n.zns, n.zt.Name, "0b6b2c1e-0000-4000-8000-000000000000"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("a token for another UID: %v; want the API server to refuse it", err)
	}
	web := identity(n.app, "web")
	if err := n.askFor(t, n.tok, nil, web, 3600); err != nil { // reviewed and cached
		t.Fatal(err)
	}
	unreviewed := podToken(t, n.zt)
	grace := int64(0)
	if err := apiserver.Client.CoreV1().Pods(n.zns).Delete(context.Background(), n.zt.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	createPod(t, podSpec{n.zt.Name, n.zns, "ztunnel", "n1"})
	wantRefused(t, n.f, n.askFor(t, n.tok, nil, web, 3600), nodeauth.ReasonPodUID, "UID does not match: ")
	csr, _ := ztunnelCSR(t, web)
	// A token of the earlier pod that neither warden nor the API server
	// has reviewed (the API server caches a review for 10 s, warden's
	// TokenReview for up to 5 min: the authorizer's UID check is what
	// refuses the reviewed one) is refused by the review itself.
	_, err := ask(ctxT(t), n.f.client(t, nil), unreviewed, cluster, web, csr, 3600)
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "does not match service account pod ref claim") {
		t.Fatalf("the earlier pod's token, not reviewed before: %v", err)
	}
}

// TestImpersonationKeepsTheCAsRules: an impersonated certificate is held
// to the rules of any other: the TTL cap, the CSR's SANs (where warden is
// stricter than istiod, which ignores them: a URI SAN must be the
// identity asked for, as cert-manager's istio-csr requires), and warden's
// trust domain (istiod signs any).
func TestImpersonationKeepsTheCAsRules(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	web := identity(n.app, "web")
	cl := n.f.client(t, nil)
	call := func(csr string, ttl int64, asked string) error {
		_, err := ask(ctxT(t), cl, n.tok, cluster, asked, csr, ttl)
		return err
	}
	csrWeb, _ := ztunnelCSR(t, web)
	wantCode(t, call(csrWeb, int64((ca.DefaultMaxTTL+time.Hour)/time.Second), web), codes.InvalidArgument, "exceeds the maximum")
	csrOwn, _ := ztunnelCSR(t, identity(n.zns, "ztunnel"))
	wantCode(t, call(csrOwn, 3600, web), codes.PermissionDenied, "certificate for "+web+" (ImpersonatedIdentity): ca: identity mismatch: CSR names "+identity(n.zns, "ztunnel"))
	key := catest.Key(t, ca.ECDSAP256)
	u, _ := url.Parse(web)
	dns := catest.CSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"web.example"}})
	wantCode(t, call(string(dns), 3600, web), codes.InvalidArgument, "DNS SANs are not allowed")
	// A CSR without a URI SAN is signed for the identity asked for, as an
	// own request without one is signed for the caller's.
	bare := catest.CSR(t, key, nil)
	res, err := ask(ctxT(t), cl, n.tok, cluster, web, string(bare), 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := checkZtunnelAnswer(t, n.f, res, key, web)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < ca.DefaultTTL || life > ca.DefaultTTL+10*time.Minute {
		t.Errorf("lifetime %s, want the default %s (and the backdating)", life, ca.DefaultTTL)
	}
	foreign := "spiffe://other.example/ns/" + n.app + "/sa/web"
	csrForeign, _ := ztunnelCSR(t, foreign)
	wantRefused(t, n.f, call(csrForeign, 3600, foreign), nodeauth.ReasonTrustDomain, "outside trust domain cluster.local")
	for _, bad := range []string{"spiffe://cluster.local/ns/" + n.app + "/sa/web/extra", "spiffe://cluster.local/ns//sa/web", "spiffe://Cluster.local/ns/a/sa/b"} {
		wantRefused(t, n.f, call(csrWeb, 3600, bad), nodeauth.ReasonIdentity, "failed to validate impersonated identity")
	}
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if st, _ := status.FromError(err); st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v, want %s with %q", err, code, msg)
	}
}

// TestParseAccounts: --trusted-node-accounts, istiod's
// CA_TRUSTED_NODE_ACCOUNTS syntax; a bad entry is an error naming it.
func TestParseAccounts(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want []nodeauth.Account
		err  string
	}{
		{in: ""},
		{in: "istio-system/ztunnel", want: []nodeauth.Account{{Namespace: "istio-system", Name: "ztunnel"}}},
		{in: " istio-system/ztunnel , kube-system/node-proxy,istio-system/ztunnel,", want: []nodeauth.Account{{Namespace: "istio-system", Name: "ztunnel"}, {Namespace: "kube-system", Name: "node-proxy"}}},
		{in: "ztunnel", err: `nodeauth: trusted node account "ztunnel": want <namespace>/<service account>, e.g. istio-system/ztunnel`},
		{in: "istio-system/", err: `nodeauth: trusted node account "istio-system/": want <namespace>/<service account>, e.g. istio-system/ztunnel`},
		{in: "a/b/c", err: `nodeauth: trusted node account "a/b/c": want <namespace>/<service account>, e.g. istio-system/ztunnel`},
	} {
		got, err := nodeauth.ParseAccounts(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("ParseAccounts(%q): %v, want %s", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseAccounts(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}
