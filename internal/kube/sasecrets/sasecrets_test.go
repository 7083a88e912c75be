package sasecrets_test

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/sasecrets"
	"github.com/wardenmesh/warden/internal/testkit"
)

func TestSASecretsLifecycle(t *testing.T) {
	ctx := kubetest.Context(t)
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}), func(c *ca.Config) { c.Backdate = time.Second })
	ctrl := &sasecrets.Controller{Client: apiserver.Client, Authority: a, TTL: 8 * time.Second}
	go func() { _ = ctrl.Run(ctx) }()
	ns := apiserver.Namespace(t, "sas")
	apiserver.ServiceAccount(t, ns, "flaskapp")
	secrets := apiserver.Client.CoreV1().Secrets(ns)
	get := func() (*corev1.Secret, error) { return secrets.Get(ctx, "istio.flaskapp", metav1.GetOptions{}) }

	var first *corev1.Secret
	kubetest.Eventually(t, 20*time.Second, func() (err error) { first, err = get(); return err })
	if first.Type != sasecrets.Type || first.Annotations[sasecrets.ServiceAccountAnnotation] != "flaskapp" {
		t.Fatalf("type %q annotations %v", first.Type, first.Annotations)
	}
	certs, err := ca.ParseCerts(first.Data["cert-chain.pem"])
	if err != nil || certs[0].URIs[0].String() != "spiffe://cluster.local/ns/"+ns+"/sa/flaskapp" {
		t.Fatalf("cert-chain.pem: %v %v", err, certs)
	}
	if key, err := ca.ParseKey(first.Data["key.pem"]); err != nil || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
		t.Fatalf("key.pem does not match the certificate: %v", err)
	}

	// Refreshed at half its lifetime.
	kubetest.Eventually(t, 20*time.Second, func() error {
		s, err := get()
		if err != nil {
			return err
		}
		if bytes.Equal(s.Data["cert-chain.pem"], first.Data["cert-chain.pem"]) {
			return errors.New("not refreshed yet")
		}
		return nil
	})

	// Refreshed when the root changes.
	newRoot := catest.Root(t, ca.CAOptions{CommonName: "new root"})
	if err := a.Activate(newRoot); err != nil {
		t.Fatal(err)
	}
	ctrl.Changed(nil)
	kubetest.Eventually(t, 20*time.Second, func() error {
		s, err := get()
		if err != nil {
			return err
		}
		if !bytes.Equal(s.Data["root-cert.pem"], ca.EncodeCerts(newRoot.Cert)) {
			return errors.New("root-cert.pem still the old root")
		}
		return nil
	})

	// Recreated after deletion while the SA exists.
	if err := secrets.Delete(ctx, "istio.flaskapp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error { _, err := get(); return err })

	// Deleted with the SA.
	if err := apiserver.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "flaskapp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, err := get(); !apierrors.IsNotFound(err) {
			return fmt.Errorf("secret still there (%v)", err)
		}
		return nil
	})

	// A namespace that opts out gets none.
	optOut := apiserver.Namespace(t, "optout")
	n, _ := apiserver.Client.CoreV1().Namespaces().Get(ctx, optOut, metav1.GetOptions{})
	n.Labels[sasecrets.OptOutLabel] = "disabled"
	if _, err := apiserver.Client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	apiserver.ServiceAccount(t, optOut, "quiet")
	apiserver.ServiceAccount(t, ns, "marker") // processed after "quiet" by the same queue
	kubetest.Eventually(t, 20*time.Second, func() error { _, err := secrets.Get(ctx, "istio.marker", metav1.GetOptions{}); return err })
	// The label may reach the controller after the service account did;
	// the namespace converges to none either way.
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, err := apiserver.Client.CoreV1().Secrets(optOut).Get(ctx, "istio.quiet", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("opted-out namespace holds a secret (%v)", err)
		}
		return nil
	})
	// And stays so: a reconcile that ran before the label arrived may
	// create one late; the controller sees its creation and removes it.
	time.Sleep(time.Second)
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, err := apiserver.Client.CoreV1().Secrets(optOut).Get(ctx, "istio.quiet", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("opted-out namespace got a secret back (%v)", err)
		}
		return nil
	})

	// Opting out later removes the secrets already there.
	apiserver.ServiceAccount(t, ns, "later")
	kubetest.Eventually(t, 20*time.Second, func() error { _, err := secrets.Get(ctx, "istio.later", metav1.GetOptions{}); return err })
	n, _ = apiserver.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	n.Labels[sasecrets.OptOutLabel] = "disabled"
	if _, err := apiserver.Client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, err := secrets.Get(ctx, "istio.later", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("secret still there after opting out (%v)", err)
		}
		return nil
	})
}

// TestSASecretsBelongToOneInstall: the istio.<sa> Secrets too are left
// alone by a second install with another CA, instead of being re-issued
// by each in turn.
func TestSASecretsBelongToOneInstall(t *testing.T) {
	ctx := kubetest.Context(t)
	var logB testkit.Buffer
	a := &sasecrets.Controller{Client: apiserver.Client, Owner: "install-a", Authority: catest.Authority(t, catest.Root(t, ca.CAOptions{CommonName: "root a"}))}
	go func() { _ = a.Run(ctx) }()
	ns := apiserver.Namespace(t, "sasowner")
	apiserver.ServiceAccount(t, ns, "sleep")
	var first *corev1.Secret
	kubetest.Eventually(t, 20*time.Second, func() (err error) {
		first, err = apiserver.Client.CoreV1().Secrets(ns).Get(ctx, "istio.sleep", metav1.GetOptions{})
		return err
	})
	if first.Annotations[kube.OwnerAnnotation] != "install-a" {
		t.Fatalf("owner annotation %q", first.Annotations[kube.OwnerAnnotation])
	}
	b := &sasecrets.Controller{Client: apiserver.Client, Owner: "install-b", Authority: catest.Authority(t, catest.Root(t, ca.CAOptions{CommonName: "root b"})),
		Log: slog.New(slog.NewTextHandler(&logB, nil))}
	go func() { _ = b.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(logB.String(), "Secret "+ns+"/istio.sleep belongs to another warden install") {
			return fmt.Errorf("no conflict reported yet")
		}
		return nil
	})
	time.Sleep(time.Second)
	now, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, "istio.sleep", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if now.ResourceVersion != first.ResourceVersion {
		t.Errorf("the second install rewrote the first's Secret")
	}
}
