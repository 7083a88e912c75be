package trustbundle_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
	"github.com/wardenmesh/warden/internal/testkit"
)

// The signer and trust domain deploy/warden/rbac.yaml grants.
const (
	signer = "wardenmesh.io/spiffe"
	td     = "cluster.local"
	name   = "wardenmesh.io:spiffe:cluster.local"
)

// fresh deletes the bundle a test before left.
func fresh(t *testing.T) {
	t.Helper()
	err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Delete(context.Background(), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func roots(t *testing.T, n int) (pems [][]byte, fps []string) {
	for range n {
		r := catest.Root(t, ca.CAOptions{})
		pems = append(pems, ca.EncodeCerts(r.Cert))
		fps = append(fps, ca.Fingerprint(r.Cert))
	}
	return pems, fps
}

func join(b ...[]byte) []byte { return bytes.Join(b, nil) }

// holds waits until the bundle is want, labelled with the trust domain,
// linked to the signer, and this install's.
func holds(t *testing.T, want []byte) {
	t.Helper()
	kubetest.Eventually(t, 20*time.Second, func() error {
		b, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if b.Spec.TrustBundle != string(want) || b.Spec.SignerName != signer || b.Labels[trustbundle.TrustDomainLabel] != td || b.Annotations[kube.OwnerAnnotation] != kube.DefaultOwner {
			return fmt.Errorf("bundle %s: signer %q labels %v annotations %v, %d bytes", name, b.Spec.SignerName, b.Labels, b.Annotations, len(b.Spec.TrustBundle))
		}
		return nil
	})
}

// TestPublisherKeepsTheBundle: with exactly the deploy RBAC (attest on
// warden's signer), the publisher creates the ClusterTrustBundle, follows
// the roots (both during a rotation), repairs an edit, recreates it when
// deleted, and tells a rotation and warden check whether it holds a root.
func TestPublisherKeepsTheBundle(t *testing.T) {
	fresh(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg, _ := apiserver.Warden(t)
	cs := kubernetes.NewForConfigOrDie(cfg)
	pems, fps := roots(t, 3)
	var cur atomic.Pointer[[]byte]
	cur.Store(&pems[0])
	logs := &testkit.Buffer{}
	p := &trustbundle.Publisher{Client: cs, SignerName: signer, TrustDomain: td, Bundle: func() []byte { return *cur.Load() },
		Log: slog.New(slog.NewTextHandler(logs, nil))}
	if total, missing := p.Missing(fps[0]); total != 1 || len(missing) != 1 || !strings.Contains(missing[0], "does not publish") {
		t.Errorf("before Run: Missing = %d %v", total, missing)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	holds(t, pems[0])
	kubetest.Eventually(t, 5*time.Second, func() error {
		if total, missing := p.Missing(fps[0]); total != 1 || len(missing) != 0 {
			return fmt.Errorf("Missing(root 0) = %d %v", total, missing)
		}
		return nil
	})
	if total, missing := p.Missing(fps[1]); total != 1 || len(missing) != 1 || missing[0] != "clustertrustbundle "+name {
		t.Errorf("Missing(root 1) = %d %v", total, missing)
	}
	if r := p.Check(ctx, fps[0], time.Now()); len(r) != 1 || r[0].Status != check.OK {
		t.Errorf("Check = %+v", r)
	}

	// A rotation publishes a second root: both are held, signing root
	// first.
	both := join(pems[0], pems[1])
	cur.Store(&both)
	p.Changed(nil)
	holds(t, both)

	// Edited by someone else: repaired.
	admin := apiserver.Client.CertificatesV1().ClusterTrustBundles()
	b, err := admin.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Spec.TrustBundle = string(pems[2])
	if _, err := admin.Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	holds(t, both)
	testkit.WaitLog(t, logs, "rewrote ClusterTrustBundle", 5*time.Second)
	// Deleted: recreated.
	if err := admin.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	holds(t, both)

	// warden check, with the publisher stopped and the bundle edited:
	// it differs from the trust bundle.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, _ = admin.Get(context.Background(), name, metav1.GetOptions{})
	b.Spec.TrustBundle = string(join(pems[0], pems[2]))
	if _, err := admin.Update(context.Background(), b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := p.Check(context.Background(), fps[0], time.Now())
	c2, _ := ca.ParseCerts(pems[2])
	c1, _ := ca.ParseCerts(pems[1])
	want := fmt.Sprintf("ClusterTrustBundle %s differs from the trust bundle: it lacks %s (sha256 %s); holds roots the mesh does not trust: %s (sha256 %s)",
		name, c1[0].Subject, ca.Fingerprint(c1[0])[:16], c2[0].Subject, ca.Fingerprint(c2[0])[:16])
	if len(r) != 1 || r[0].Status != check.Error || r[0].Message != want {
		t.Errorf("Check = %+v\nwant %q", r, want)
	}
	if r := p.Check(context.Background(), fps[1], time.Now()); len(r) != 1 || r[0].Status != check.Error || !strings.Contains(r[0].Message, "lacks the signing root") {
		t.Errorf("Check(root 1) = %+v", r)
	}
	if err := admin.Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := p.Check(context.Background(), fps[0], time.Now()); len(r) != 1 || r[0].Status != check.Error || !strings.Contains(r[0].Message, "is missing") {
		t.Errorf("Check(missing) = %+v", r)
	}
}

// TestPublisherLeavesAnotherInstallsBundle: a ClusterTrustBundle another
// install owns is not rewritten, the conflict is logged, a rotation does
// not wait for it, and warden check warns.
func TestPublisherLeavesAnotherInstallsBundle(t *testing.T) {
	fresh(t)
	ctx := kubetest.Context(t)
	pems, fps := roots(t, 2)
	theirs := &certv1.ClusterTrustBundle{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{kube.OwnerAnnotation: "other-install"}},
		Spec:       certv1.ClusterTrustBundleSpec{SignerName: signer, TrustBundle: string(pems[1])},
	}
	if _, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh(t) })
	cfg, _ := apiserver.Warden(t)
	logs := &testkit.Buffer{}
	p := &trustbundle.Publisher{Client: kubernetes.NewForConfigOrDie(cfg), SignerName: signer, TrustDomain: td,
		Bundle: func() []byte { return pems[0] }, Log: slog.New(slog.NewTextHandler(logs, nil))}
	go func() { _ = p.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "belongs to another warden install (warden.io/owner=other-install)") {
			return fmt.Errorf("no conflict logged yet")
		}
		return nil
	})
	b, err := apiserver.Client.CertificatesV1().ClusterTrustBundles().Get(ctx, name, metav1.GetOptions{})
	if err != nil || b.Spec.TrustBundle != string(pems[1]) {
		t.Fatalf("another install's bundle was rewritten (%v)", err)
	}
	if total, missing := p.Missing(fps[0]); total != 0 || len(missing) != 0 {
		t.Errorf("Missing = %d %v, want nothing to wait for", total, missing)
	}
	if r := p.Check(ctx, fps[0], time.Now()); len(r) != 1 || r[0].Status != check.Warn || !strings.Contains(r[0].Message, "belongs to another warden install") {
		t.Errorf("Check = %+v", r)
	}
}

// TestNameAndValidate: the name the API server requires of a bundle
// linked to a signer, and a trust domain that cannot make one.
func TestNameAndValidate(t *testing.T) {
	if got := trustbundle.Name("example.org/mesh", "prod.example.org"); got != "example.org:mesh:prod.example.org" {
		t.Errorf("Name = %q", got)
	}
	if err := trustbundle.Validate(signer, "under_score"); err == nil || !strings.HasPrefix(err.Error(), `trustbundle: trust domain "under_score" cannot name a ClusterTrustBundle: `) {
		t.Errorf("Validate(under_score) = %v", err)
	}
	if err := trustbundle.Validate(signer, td); err != nil {
		t.Error(err)
	}
}
