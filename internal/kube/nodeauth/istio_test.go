package nodeauth_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
)

// Istio's node authorization tests (istio/istio
// security/pkg/server/ca/node_auth_test.go and server_test.go) as tables
// against warden: the same pods, in a real API server, and the callers'
// real pod-bound tokens (kubectl create token --bound-object-kind Pod),
// reviewed by the API server, over real gRPC and TLS, with a CSR as
// ztunnel makes it. Each case runs in namespaces of its own: the
// ztunnel's stands for Istio's istio-system, and is the one trusted.
// wantErr is Istio's expected error, which warden's logged reason must
// contain; where warden's outcome differs from Istio's, the case says so
// (differ) and why.

// identity is a pod's SPIFFE ID in the fixtures' trust domain.
func identity(ns, sa string) string { return catest.ID(ns, sa).String() }

// wantRefused checks a refused impersonation: Unauthenticated, the
// caller told the reason's label only, and the whole reason (Istio's
// wording, wantErr) logged.
func wantRefused(t *testing.T, f *caFixture, err error, reason, wantErr string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.Unauthenticated || st.Message() != "request impersonation authentication failure ("+reason+")" {
		t.Fatalf("got %v, want Unauthenticated, request impersonation authentication failure (%s)", err, reason)
	}
	var r *server.Refusal
	if last := f.authz.last(); !errors.As(last, &r) || r.Reason != reason || !strings.Contains(r.Detail, wantErr) {
		t.Fatalf("refused with %v; want reason %s and Istio's %q in it", last, reason, wantErr)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "certificate request refused") || !strings.Contains(logs, reasonFragment(r.Detail)) {
		t.Fatalf("the reason is not logged:\n%s", f.logs.String())
	}
}

// reasonFragment is a part of a detail that the log's quoting leaves as
// it is.
func reasonFragment(detail string) string {
	if i := strings.IndexAny(detail, `"`); i > 0 {
		return detail[:i]
	}
	return detail
}

// callerState is the state of the ztunnel's pod when it asks.
type callerState int

const (
	running      callerState = iota
	failed                   // in phase Failed: no longer among the pods
	recreated                // deleted and made again under its name: its token names the earlier UID
	otherAccount             // running as another account than its token's
)

func TestSingleClusterNodeAuthorization(t *testing.T) {
	const cluster = "Kubernetes"
	const (
		sameNode  = "pod-a" // Istio's podSameNode: ns-a/sa-a on zt-node
		otherNode = "pod-b" // podOtherNode: ns-a/sa-a on other-node
	)
	cases := []struct {
		name    string
		trusted bool
		pods    []string // besides the ztunnel's, which its token needs
		caller  callerState
		asked   string // "" asks for sa-a's identity
		wantErr string // Istio's; "" allowed
		reason  string // warden's label
		how     string // how warden's case stands for Istio's
	}{
		{name: "empty allowed identities", wantErr: "not allowed to impersonate", reason: nodeauth.ReasonUntrusted,
			how: "Istio's caller is empty and asks for no identity; here ztunnel's real token asks for sa-a's, with no account trusted"},
		{name: "allowed identities, but not on node", trusted: true, wantErr: "no instances", reason: nodeauth.ReasonNotOnNode},
		{name: "allowed identities, on node", trusted: true, pods: []string{sameNode}},
		{name: "allowed identities, off node", trusted: true, pods: []string{otherNode}, wantErr: "no instances", reason: nodeauth.ReasonNotOnNode},
		{name: "allowed identities, on and off node", trusted: true, pods: []string{sameNode, otherNode}},
		{name: "invalid requested", trusted: true, asked: "not-spiffe-idenditity", wantErr: "failed to validate impersonated identity", reason: nodeauth.ReasonIdentity},
		{name: "unknown caller", trusted: true, pods: []string{sameNode}, caller: failed, wantErr: "ztunnel-a not found", reason: nodeauth.ReasonPodNotFound,
			how: "Istio's caller names a pod that is not there; here ztunnel's pod is in phase Failed, which the API server still reviews the token of and warden's index leaves out"},
		{name: "bad UID", trusted: true, caller: recreated, wantErr: "pod found, but UID does not match", reason: nodeauth.ReasonPodUID,
			how: "ztunnel's token is reviewed (and cached) while its pod runs, then the pod is made again under its name"},
		{name: "bad account", trusted: true, caller: otherAccount, wantErr: "pod found, but ServiceAccount does not match", reason: nodeauth.ReasonPodAccount,
			how: "no real token reaches it: the API server binds a token only to a pod of its own account (checked below), and a pod made again gets a new UID, refused first; the authorizer is asked with the caller a TokenReview of such a token would give"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.how != "" {
				t.Logf("as Istio's case: %s", c.how)
			}
			zns, nsA := apiserver.Namespace(t, "istio-system"), apiserver.Namespace(t, "ns-a")
			ztSpec := podSpec{"ztunnel-a", zns, "ztunnel", "zt-node"}
			if c.caller == otherAccount {
				ztSpec.sa = "bogus"
			}
			zt := createPod(t, ztSpec)
			for _, name := range c.pods {
				node := "zt-node"
				if name == otherNode {
					node = "other-node"
				}
				createPod(t, podSpec{name, nsA, "sa-a", node})
			}
			var trusted []nodeauth.Account
			if c.trusted {
				trusted = []nodeauth.Account{{Namespace: zns, Name: "ztunnel"}}
			}
			na := authorizer(t, cluster, trusted...)
			asked := c.asked
			if asked == "" {
				asked = identity(nsA, "sa-a")
			}
			if c.caller == otherAccount {
				askDirect(t, na, zt, cluster, asked, c.wantErr, c.reason)
				return
			}
			tok := podToken(t, zt)
			f := newCA(t, na)
			cl := f.client(t, nil)
			switch c.caller {
			case failed:
				failPod(t, zt)
			case recreated:
				own, _ := ztunnelCSR(t, identity(zns, "ztunnel"))
				if _, err := ask(ctxT(t), cl, tok, cluster, "", own, 0); err != nil {
					t.Fatalf("ztunnel's own certificate: %v", err)
				}
				grace := int64(0)
				if err := apiserver.Client.CoreV1().Pods(zns).Delete(context.Background(), zt.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
					t.Fatal(err)
				}
				if again := createPod(t, ztSpec); again.UID == zt.UID {
					t.Fatal("the pod made again has its predecessor's UID")
				}
			}
			csr, key := ztunnelCSR(t, asked)
			res, err := ask(ctxT(t), cl, tok, cluster, asked, csr, 3600)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("%v (%v)", err, f.authz.last())
				}
				checkZtunnelAnswer(t, f, res, key, asked)
				return
			}
			wantRefused(t, f, err, c.reason, c.wantErr)
		})
	}
}

// askDirect asks the authorizer, as CreateCertificate would, for a
// caller whose pod runs as another account than its token's, and first
// shows that the API server mints no such token.
func askDirect(t *testing.T, na *nodeauth.Authorizer, pod *corev1.Pod, cluster, asked, wantErr, reason string) {
	t.Helper()
	apiserver.ServiceAccount(t, pod.Namespace, "ztunnel")
	if _, err := podTokenErr(t, "ztunnel", pod.Namespace, pod.Name, string(pod.UID)); err == nil || !strings.Contains(err.Error(), "different serviceaccount") {
		t.Fatalf("a token of account ztunnel bound to a pod of account %s: %v; want the API server to refuse it", pod.Spec.ServiceAccountName, err)
	}
	caller := &server.Caller{ID: catest.ID(pod.Namespace, "ztunnel"), Method: "tokenreview",
		Kubernetes: &server.KubernetesCaller{Namespace: pod.Namespace, ServiceAccount: "ztunnel", PodName: pod.Name, PodUID: string(pod.UID)}}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(server.ClusterIDHeader, cluster))
	md := askedMetadata(t, asked)
	_, err := na.Authorize(ctx, caller, &server.Request{Metadata: md})
	var r *server.Refusal
	if !errors.As(err, &r) || r.Reason != reason || !strings.Contains(r.Detail, wantErr) {
		t.Fatalf("refused with %v; want reason %s and Istio's %q in it", err, reason, wantErr)
	}
}

func TestMultiClusterNodeAuthorization(t *testing.T) {
	// warden's Kubernetes mode serves one cluster, the API server it
	// watches, named by --cluster-id: Istio's primary. Istio's remote
	// clusters' ztunnels (ztunnel-b, ztunnel-c) run here too, because
	// warden's TokenReview asks this one API server; their pods stand
	// where Istio's remote ones do (zt-node-remote), and pod-b (ns-b/sa-b)
	// runs in no cluster warden watches.
	const primary = "primary"
	zns, nsA, nsB := apiserver.Namespace(t, "istio-system"), apiserver.Namespace(t, "ns-a"), apiserver.Namespace(t, "ns-b")
	ztA := createPod(t, podSpec{"ztunnel-a", zns, "ztunnel", "zt-node-primary"})
	ztB := createPod(t, podSpec{"ztunnel-b", zns, "ztunnel", "zt-node-remote"})
	ztC := createPod(t, podSpec{"ztunnel-c", zns, "ztunnel", "zt-node-remote"})
	createPod(t, podSpec{"pod-a", nsA, "sa-a", "zt-node-primary"})
	tokens := map[*corev1.Pod]string{ztA: podToken(t, ztA), ztB: podToken(t, ztB), ztC: podToken(t, ztC)}
	na := authorizer(t, primary, nodeauth.Account{Namespace: zns, Name: "ztunnel"})
	cases := []struct {
		name    string
		cluster string
		caller  *corev1.Pod
		asked   string
		wantErr string // "" allowed
		reason  string
		differ  string // why warden's outcome is not Istio's
	}{
		{name: "allowed identities, on node of primary cluster", cluster: primary, caller: ztA, asked: identity(nsA, "sa-a")},
		{name: "allowed identities, on node of remote cluster", cluster: "remote", caller: ztB, asked: identity(nsB, "sa-b"),
			wantErr: `no node authorizer for cluster "remote"`, reason: nodeauth.ReasonCluster,
			differ: "Istio allows it: istiod watches the remote cluster's pods through its remote secret; warden's Kubernetes mode watches one cluster"},
		{name: "ztunnel caller from removed remote cluster", cluster: "remote2", caller: ztC, asked: identity(nsB, "sa-b"),
			wantErr: "no node authorizer", reason: nodeauth.ReasonCluster},
		{name: "allowed identities in remote cluster, but ztunnel caller from primary cluster", cluster: primary, caller: ztA, asked: identity(nsB, "sa-b"),
			wantErr: "no instance", reason: nodeauth.ReasonNotOnNode},
		// Not in Istio's table: istiod's multicluster component has no
		// authorizer for cluster "" either.
		{name: "no clusterid header", caller: ztA, asked: identity(nsA, "sa-a"), wantErr: "no node authorizer for the request's cluster", reason: nodeauth.ReasonCluster},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.differ != "" {
				t.Logf("warden differs from Istio here: %s", c.differ)
			}
			f := newCA(t, na)
			csr, key := ztunnelCSR(t, c.asked)
			res, err := ask(ctxT(t), f.client(t, nil), tokens[c.caller], c.cluster, c.asked, csr, 3600)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("%v (%v)", err, f.authz.last())
				}
				checkZtunnelAnswer(t, f, res, key, c.asked)
				return
			}
			wantRefused(t, f, err, c.reason, c.wantErr)
		})
	}
}

func TestCreateCertificateE2EWithImpersonateIdentity(t *testing.T) {
	const cluster = "fake" // Istio's test cluster
	cases := []struct {
		name     string
		selfOnly bool // no node authorizer: serve with --trusted-node-accounts ""
		pods     []podSpec
		caller   string // the ztunnel pod asking: ztunnel-a (on zt-node) or ztunnel-b (zt-node-remote)
		asked    string // the pod whose identity is asked for
		cluster  string
		code     codes.Code
		differ   string
	}{
		{name: "No node authorizer", selfOnly: true, caller: "ztunnel-a", asked: "pod-a", cluster: cluster, code: codes.Unauthenticated},
		{name: "Pod not passing node authorization", pods: []podSpec{{name: "pod-b", node: "other-node"}}, caller: "ztunnel-a", asked: "pod-b", cluster: cluster, code: codes.Unauthenticated},
		{name: "Successful signing with impersonate identity", pods: []podSpec{{name: "pod-a", node: "zt-node"}}, caller: "ztunnel-a", asked: "pod-a", cluster: cluster, code: codes.OK},
		{name: "Pod not passing node authorization because of ztunnel from other clusters", pods: []podSpec{{name: "pod-c", node: "zt-node-remote"}},
			caller: "ztunnel-a", asked: "pod-c", cluster: cluster, code: codes.Unauthenticated},
		{name: "Successful signing with impersonate identity from remote cluster", pods: []podSpec{{name: "pod-c", node: "zt-node-remote"}},
			caller: "ztunnel-b", asked: "pod-c", cluster: "fake-remote", code: codes.Unauthenticated,
			differ: "Istio signs it (OK): istiod watches the remote cluster; warden's Kubernetes mode serves one cluster"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.differ != "" {
				t.Logf("warden differs from Istio here: %s", c.differ)
			}
			zns, nsA := apiserver.Namespace(t, "istio-system"), apiserver.Namespace(t, "ns-a")
			zts := map[string]*corev1.Pod{
				"ztunnel-a": createPod(t, podSpec{"ztunnel-a", zns, "ztunnel", "zt-node"}),
				"ztunnel-b": createPod(t, podSpec{"ztunnel-b", zns, "ztunnel", "zt-node-remote"}),
			}
			for _, p := range c.pods {
				createPod(t, podSpec{p.name, nsA, "sa-a", p.node})
			}
			var authz server.Authorizer = server.SelfOnly{}
			if !c.selfOnly {
				authz = authorizer(t, cluster, nodeauth.Account{Namespace: zns, Name: "ztunnel"})
			}
			f := newCA(t, authz)
			asked := identity(nsA, "sa-a") // Istio's pods a, b and c are all ns-a/sa-a
			csr, key := ztunnelCSR(t, asked)
			res, err := ask(ctxT(t), f.client(t, nil), podToken(t, zts[c.caller]), c.cluster, asked, csr, 3600)
			if got := status.Code(err); got != c.code {
				t.Fatalf("%v (%v); want %s", err, f.authz.last(), c.code)
			}
			if c.code == codes.OK {
				checkZtunnelAnswer(t, f, res, key, asked)
			}
		})
	}
}

// askedMetadata is a request's metadata asking for identity.
func askedMetadata(t *testing.T, identity string) *structpb.Struct {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{server.ImpersonatedIdentity: identity})
	if err != nil {
		t.Fatal(err)
	}
	return md
}
