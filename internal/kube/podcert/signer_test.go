package podcert_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
)

func ptr[T any](v T) *T { return &v }

func spiffeID(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromSegments(catest.TrustDomain, "ns", ns, "sa", sa)
}

// checkIssued asserts an issued request: the chain (leaf, no root) is for
// the stub's key, names id alone, verifies against root, and its times
// are the status's, life long, refreshed at half-life.
func checkIssued(t *testing.T, r *certv1.PodCertificateRequest, key crypto.Signer, root *x509.Certificate, id spiffeid.ID, life time.Duration) *x509.Certificate {
	t.Helper()
	c := r.Status.Conditions[0]
	if c.Type != certv1.PodCertificateRequestConditionTypeIssued || c.Reason != podcert.ReasonIssued {
		t.Fatalf("condition %+v, want Issued", c)
	}
	certs, err := ca.ParseCerts([]byte(r.Status.CertificateChain))
	if err != nil || len(certs) != 1 {
		t.Fatalf("chain: %d certificates (%v), want the leaf alone (the root is the ClusterTrustBundle's)", len(certs), err)
	}
	leaf := certs[0]
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("the leaf is not for the stub's key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || len(leaf.RawSubject) != 2 {
		t.Errorf("leaf names %v %v %v, subject %q; want %s alone", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.Subject, id)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	nb, na, refresh := r.Status.NotBefore.Time, r.Status.NotAfter.Time, r.Status.BeginRefreshAt.Time
	if !nb.Equal(leaf.NotBefore) || !na.Equal(leaf.NotAfter) {
		t.Errorf("status %s..%s, leaf %s..%s", nb, na, leaf.NotBefore, leaf.NotAfter)
	}
	if got := na.Sub(nb); got != life {
		t.Errorf("lifetime %s, want %s", got, life)
	}
	if want := nb.Add(life / 2).Truncate(time.Second); !refresh.Equal(want) {
		t.Errorf("beginRefreshAt %s, want %s (half-life)", refresh, want)
	}
	return leaf
}

// TestIssuedAsTheAPIServerValidates: requests a kubelet makes (created
// with a node's credentials under NodeRestriction) are issued by warden
// running with the deploy RBAC, and the API server accepts every status:
// the pod's SPIFFE ID alone, for the stub's key, for min(maxExpiration-
// Seconds, --max-ttl), at the API's minimum, its default and above
// warden's maximum, for every key type warden issues to.
func TestIssuedAsTheAPIServerValidates(t *testing.T) {
	a, root := authority(t, func(c *ca.Config) { c.MaxTTL = 30 * 24 * time.Hour })
	s := startSigner(t, a)
	w := newWorkload(t, "node-a")
	for _, c := range []struct {
		name, keyType string
		maxExp        *int32
		life          time.Duration
	}{
		{"the API's minimum", "ECDSAP256", ptr(int32(3600)), time.Hour},
		{"the API's default", "ECDSAP384", nil, 24 * time.Hour},
		{"capped by --max-ttl", "RSA3072", ptr(int32(7862400)), 30 * 24 * time.Hour},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := w.pod(t, strings.ToLower(c.keyType))
			key := keyOf(t, c.keyType)
			r := create(t, w.node.Client, request(t, pod, w.node.Node, w.sa, key, func(r *certv1.PodCertificateRequest) { r.Spec.MaxExpirationSeconds = c.maxExp }))
			got, _ := settled(t, r, s.logs)
			leaf := checkIssued(t, got, key, root.Cert, spiffeID(w.ns, "app"), c.life)
			if d := time.Since(leaf.NotBefore); d < 0 || d > 2*time.Minute {
				t.Errorf("NotBefore %s is %s from now", leaf.NotBefore, d)
			}
		})
	}
	kubetest.Eventually(t, 5*time.Second, func() error {
		if issued, denied, _ := s.obs.counts(); issued != 3 || len(denied) != 0 {
			return fmt.Errorf("observed %d issued, %v denied", issued, denied)
		}
		return nil
	})
}

// TestLifetimeClampedToTheCA: a CA that ends sooner than the request
// allows cuts the certificate at its own end (still over the hour);
// refreshed at half of what is left.
func TestLifetimeClampedToTheCA(t *testing.T) {
	root := catest.Root(t, ca.CAOptions{TTL: 3 * time.Hour})
	s := startSigner(t, catest.Authority(t, root))
	w := newWorkload(t, "node-a")
	key := keyOf(t, "ECDSAP256")
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, key))
	got, _ := settled(t, r, s.logs)
	leaf := checkIssued(t, got, key, root.Cert, spiffeID(w.ns, "app"), root.Cert.NotAfter.Sub(got.Status.NotBefore.Time))
	if !leaf.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want the CA's %s", leaf.NotAfter, root.Cert.NotAfter)
	}
}

// TestStubNamesAreIgnored: a stub CSR naming someone else (another
// service account's SPIFFE ID, the API server's names, a subject) gets
// the pod's identity and nothing of what it asked for.
func TestStubNamesAreIgnored(t *testing.T) {
	a, root := authority(t, func(c *ca.Config) { c.CSR.AllowDNSNames, c.CSR.AllowIPAddresses = true, true })
	s := startSigner(t, a)
	w := newWorkload(t, "node-a")
	key := keyOf(t, "ECDSAP256")
	stub, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{
		URIs:        []*url.URL{spiffeID("kube-system", "admin").URL()},
		DNSNames:    []string{"kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.1")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, key, func(r *certv1.PodCertificateRequest) { r.Spec.StubPKCS10Request = stub }))
	got, _ := settled(t, r, s.logs)
	checkIssued(t, got, key, root.Cert, spiffeID(w.ns, "app"), 24*time.Hour)
}

// TestDenials: what the API server lets through but warden must refuse
// is Denied with a reason naming the check, and nothing else in the
// status; a stub key the API refuses (RSA 2048) never reaches warden.
// Requests a kubelet could not make (another node's pod, a wrong UID)
// are created by an administrator: NodeRestriction refuses them to a
// node, which the test shows too.
func TestDenials(t *testing.T) {
	a, _ := authority(t)
	s := startSigner(t, a)
	w := newWorkload(t, "node-a")
	other := apiserver.Node(t, "node-b-"+w.ns)
	admin := apiserver.Client
	onB := apiserver.Pod(t, w.ns, "on-b", "app", other.Name, signer)
	noVolume := apiserver.Pod(t, w.ns, "no-volume", "app", w.node.Name, signer, func(p *corev1.Pod) {
		p.Spec.Volumes = nil
		p.Spec.Containers[0].VolumeMounts = nil
	})
	finished := w.pod(t, "finished")
	finished.Status.Phase = corev1.PodFailed
	if _, err := admin.CoreV1().Pods(w.ns).UpdateStatus(context.Background(), finished, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	app := w.pod(t, "app")
	p256 := keyOf(t, "ECDSAP256")

	// NodeRestriction keeps a node to its own pods: the request for the
	// pod on node-b is the administrator's.
	forB := request(t, onB, w.node.Node, w.sa, p256)
	if _, err := w.node.Client.CertificatesV1().PodCertificateRequests(w.ns).Create(context.Background(), forB, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("node-a created a request for node-b's pod: %v", err)
	}
	// And the API server refuses an RSA-2048 stub to anybody.
	_, err := admin.CertificatesV1().PodCertificateRequests(w.ns).Create(context.Background(), request(t, app, w.node.Node, w.sa, keyOf(t, "RSA2048")), metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "RSA keys must have modulus size 3072 or 4096") {
		t.Fatalf("RSA-2048 stub: %v", err)
	}

	for _, c := range []struct {
		name    string
		by      string // "node" or "admin"
		req     *certv1.PodCertificateRequest
		reason  string
		message string
	}{
		{"pod on another node", "admin", forB, podcert.ReasonNodeMismatch,
			fmt.Sprintf("pod %s/on-b runs on node %q, the request names node %q", w.ns, other.Name, w.node.Name)},
		{"pod UID", "admin", request(t, app, w.node.Node, w.sa, p256, func(r *certv1.PodCertificateRequest) { r.Spec.PodUID = "0000-forged" }), podcert.ReasonPodMismatch,
			fmt.Sprintf("pod %s/app has UID %s, the request names UID 0000-forged (a pod of that name was replaced?)", w.ns, app.UID)},
		{"service account UID", "admin", request(t, app, w.node.Node, w.sa, p256, func(r *certv1.PodCertificateRequest) { r.Spec.ServiceAccountUID = "0000-forged" }), podcert.ReasonServiceAccountMismatch,
			fmt.Sprintf("service account %s/app has UID %s, the request names UID 0000-forged", w.ns, w.sa.UID)},
		{"node UID", "admin", request(t, app, w.node.Node, w.sa, p256, func(r *certv1.PodCertificateRequest) { r.Spec.NodeUID = "0000-forged" }), podcert.ReasonNodeMismatch,
			fmt.Sprintf("node %q has UID %s, the request names UID 0000-forged", w.node.Name, w.node.UID)},
		{"no such pod", "admin", request(t, app, w.node.Node, w.sa, p256, func(r *certv1.PodCertificateRequest) { r.Spec.PodName = "gone" }), podcert.ReasonPodNotFound,
			fmt.Sprintf("pod %s/gone does not exist", w.ns)},
		{"no podCertificate volume", "admin", request(t, noVolume, w.node.Node, w.sa, p256), podcert.ReasonSignerNotRequested,
			fmt.Sprintf("pod %s/no-volume mounts no podCertificate volume for signer %s", w.ns, signer)},
		{"finished pod", "node", request(t, finished, w.node.Node, w.sa, p256), podcert.ReasonPodTerminated,
			fmt.Sprintf("pod %s/finished has finished (Failed)", w.ns)},
		{"unknown annotation", "node", request(t, app, w.node.Node, w.sa, p256, func(r *certv1.PodCertificateRequest) {
			r.Spec.UnverifiedUserAnnotations = map[string]string{"example.com/dns-names": "app.example.com", "wardenmesh.io/identity": "spiffe://cluster.local/ns/kube-system/sa/admin"}
		}), podcert.ReasonInvalidAnnotations,
			"warden honours no unverifiedUserAnnotations, and got example.com/dns-names, wardenmesh.io/identity: remove userAnnotations from the podCertificate volume (docs/pod-certificates.md)"},
		{"Ed25519", "node", request(t, app, w.node.Node, w.sa, keyOf(t, "ED25519")), podcert.ReasonUnsupportedKeyType,
			"ca: invalid CSR: key type Ed25519 is not allowed (want ECDSA P-256/P-384 or RSA): set keyType ECDSAP256 (or ECDSAP384, RSA3072, RSA4096) in the podCertificate volume"},
		{"P-521", "node", request(t, app, w.node.Node, w.sa, keyOf(t, "ECDSAP521")), podcert.ReasonUnsupportedKeyType,
			"ca: invalid CSR: ECDSA curve P-521 is not allowed (want P-256 or P-384): set keyType ECDSAP256 (or ECDSAP384, RSA3072, RSA4096) in the podCertificate volume"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cs := w.node.Client
			if c.by == "admin" {
				cs = admin
			}
			got, cond := settled(t, create(t, cs, c.req), s.logs)
			if cond.Type != certv1.PodCertificateRequestConditionTypeDenied || cond.Reason != c.reason || cond.Message != c.message {
				t.Errorf("condition %s %s %q\nwant Denied %s %q", cond.Type, cond.Reason, cond.Message, c.reason, c.message)
			}
			if got.Status.CertificateChain != "" || got.Status.NotBefore != nil || got.Status.NotAfter != nil || got.Status.BeginRefreshAt != nil {
				t.Errorf("a denial carries %+v", got.Status)
			}
		})
	}
	// Counted once the status is written: a moment after the test sees it.
	kubetest.Eventually(t, 5*time.Second, func() error {
		if issued, denied, _ := s.obs.counts(); issued != 0 || denied[podcert.ReasonNodeMismatch] != 2 || denied[podcert.ReasonUnsupportedKeyType] != 2 || denied[podcert.ReasonInvalidAnnotations] != 1 {
			return fmt.Errorf("observed %d issued, denied %v", issued, denied)
		}
		return nil
	})
	if !strings.Contains(s.logs.String(), "pod certificate request denied") {
		t.Errorf("no denial logged:\n%s", s.logs)
	}
}

// TestCAOutageLeavesRequestsPending: while the CA cannot sign (no
// material yet, as a Vault-backed CA before its first intermediate) a
// request stays pending — never Failed, which a kubelet takes as final —
// and is retried with backoff, reported once; when the CA can sign, it
// is issued.
func TestCAOutageLeavesRequestsPending(t *testing.T) {
	a, err := ca.New(ca.Config{TrustDomain: catest.TrustDomain}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startSigner(t, a, func(s *podcert.Signer) { s.RetryBase, s.RetryMax = 50*time.Millisecond, 500*time.Millisecond })
	w := newWorkload(t, "node-a")
	key := keyOf(t, "ECDSAP256")
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, key))
	// Every status the request ever has, from now on.
	ctx := kubetest.Context(t)
	watcher, err := apiserver.Client.CertificatesV1().PodCertificateRequests(w.ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + r.Name, ResourceVersion: r.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Stop()
	kubetest.Eventually(t, 10*time.Second, func() error {
		if _, _, retried := s.obs.counts(); retried["ca_unavailable"] < 3 {
			return fmt.Errorf("retried %v", retried)
		}
		return nil
	})
	if got, _ := apiserver.Client.CertificatesV1().PodCertificateRequests(w.ns).Get(ctx, r.Name, metav1.GetOptions{}); len(got.Status.Conditions) != 0 {
		t.Fatalf("during the outage: %+v", got.Status.Conditions)
	}
	if n := strings.Count(s.logs.String(), "the CA cannot sign"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, s.logs)
	}
	if p := s.Pending(); p != 1 {
		t.Errorf("Pending() = %d", p)
	}
	root := catest.Root(t, ca.CAOptions{})
	if err := a.Activate(root); err != nil {
		t.Fatal(err)
	}
	got, _ := settled(t, r, s.logs)
	checkIssued(t, got, key, root.Cert, spiffeID(w.ns, "app"), 24*time.Hour)
	if !strings.Contains(s.logs.String(), "issuing pod certificates again") {
		t.Errorf("the recovery was not logged:\n%s", s.logs)
	}
	for {
		select {
		case ev := <-watcher.ResultChan():
			if ev.Type != watch.Modified {
				continue
			}
			for _, c := range ev.Object.(*certv1.PodCertificateRequest).Status.Conditions {
				if c.Type != certv1.PodCertificateRequestConditionTypeIssued {
					t.Fatalf("the request was %s (%s) on its way", c.Type, c.Message)
				}
			}
		case <-time.After(time.Second):
			return
		}
	}
}

// TestCAExpiringWithinTheHourWaits: a CA that ends in less than the
// API's one-hour minimum cannot issue a valid certificate: requests wait
// (never Failed) for the CA's renewal, and are issued under it.
func TestCAExpiringWithinTheHourWaits(t *testing.T) {
	short := catest.Root(t, ca.CAOptions{TTL: 50 * time.Minute})
	a := catest.Authority(t, short)
	s := startSigner(t, a, func(s *podcert.Signer) { s.RetryBase, s.RetryMax = 50*time.Millisecond, 500*time.Millisecond })
	w := newWorkload(t, "node-a")
	key := keyOf(t, "ECDSAP256")
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, key))
	kubetest.Eventually(t, 10*time.Second, func() error {
		if _, _, retried := s.obs.counts(); retried["ca_expiring"] < 2 {
			return fmt.Errorf("retried %v", retried)
		}
		return nil
	})
	if got, _ := apiserver.Client.CertificatesV1().PodCertificateRequests(w.ns).Get(context.Background(), r.Name, metav1.GetOptions{}); len(got.Status.Conditions) != 0 {
		t.Fatalf("with a CA ending within the hour: %+v", got.Status.Conditions)
	}
	if !strings.Contains(s.logs.String(), "the signing CA expires within the hour") {
		t.Errorf("not logged:\n%s", s.logs)
	}
	renewed := catest.Root(t, ca.CAOptions{})
	if err := a.Activate(renewed); err != nil {
		t.Fatal(err)
	}
	got, _ := settled(t, r, s.logs)
	checkIssued(t, got, key, renewed.Cert, spiffeID(w.ns, "app"), 24*time.Hour)
}

// TestReplacedPodIsIssued: a pod deleted and created again under the
// same name has a new UID; a request for the new one right away is
// issued, whether or not warden's informer has seen the new pod yet (a
// mismatch is read again from the API server, never denied on a stale
// copy).
func TestReplacedPodIsIssued(t *testing.T) {
	a, root := authority(t)
	s := startSigner(t, a)
	w := newWorkload(t, "node-a")
	// The informer holds the first pod for sure once its request is
	// settled.
	first := w.pod(t, "app")
	settled(t, create(t, w.node.Client, request(t, first, w.node.Node, w.sa, keyOf(t, "ECDSAP256"))), s.logs)
	for range 3 {
		zero := int64(0)
		if err := apiserver.Client.CoreV1().Pods(w.ns).Delete(context.Background(), "app", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		kubetest.Eventually(t, 10*time.Second, func() error {
			if _, err := apiserver.Client.CoreV1().Pods(w.ns).Get(context.Background(), "app", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("pod not gone: %v", err)
			}
			return nil
		})
		fresh := w.pod(t, "app")
		key := keyOf(t, "ECDSAP256")
		got, _ := settled(t, create(t, w.node.Client, request(t, fresh, w.node.Node, w.sa, key)), s.logs)
		checkIssued(t, got, key, root.Cert, spiffeID(w.ns, "app"), 24*time.Hour)
	}
}

// TestCheck: warden check's findings: requests pending too long (no
// leader signing) are an error naming them; denials a warning per
// reason; otherwise a count.
func TestCheck(t *testing.T) {
	// The requests of the tests before are gone, as
	// kube-controller-manager deletes them after 15 minutes.
	ctx := context.Background()
	all, err := apiserver.Client.CertificatesV1().PodCertificateRequests("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all.Items {
		if err := apiserver.Client.CertificatesV1().PodCertificateRequests(r.Namespace).Delete(ctx, r.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w := newWorkload(t, "node-a")
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, keyOf(t, "ECDSAP256")))
	res := podcert.Check(ctx, apiserver.Client, signer, time.Now().Add(time.Hour), time.Minute)
	found := false
	for _, x := range res {
		if x.Status == "error" && strings.Contains(x.Message, "pending longer than 1m0s") && strings.Contains(x.Message, w.ns+"/"+r.Name+" (pod app)") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no pending finding for %s: %+v", r.Name, res)
	}
	a, _ := authority(t)
	s := startSigner(t, a)
	settled(t, r, s.logs)
	bad := create(t, w.node.Client, request(t, w.pod(t, "other"), w.node.Node, w.sa, keyOf(t, "ED25519")))
	settled(t, bad, s.logs)
	res = podcert.Check(ctx, apiserver.Client, signer, time.Now(), time.Minute)
	var warned, ok bool
	for _, x := range res {
		switch {
		case x.Status == "warning" && strings.Contains(x.Message, "denied, UnsupportedKeyType: ") && strings.Contains(x.Message, w.ns+"/"+bad.Name+" (pod other): ca: invalid CSR: key type Ed25519"):
			warned = true
		case x.Status == "ok" && strings.Contains(x.Message, "none pending longer than 1m0s"):
			ok = true
		case x.Status == "error":
			t.Errorf("error finding: %s", x.Message)
		}
	}
	if !warned || !ok {
		t.Errorf("findings %+v", res)
	}
}

// pemCert is c as PEM.
func pemCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}
