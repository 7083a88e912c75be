package kube_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

func TestCASecretTwoReplicasOneRoot(t *testing.T) {
	ns := apiserver.Namespace(t, "race")
	var wg sync.WaitGroup
	var created atomic.Int32
	roots := make([][]byte, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			store := &kube.SecretStore{Client: apiserver.Client, Namespace: ns}
			m, c, err := ca.LoadOrCreate(context.Background(), store, nil, func() (*ca.Material, error) {
				return ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local"})
			})
			if err != nil {
				t.Error(err)
				return
			}
			if c {
				created.Add(1)
			}
			roots[i] = m.Roots[0].Raw
		}()
	}
	wg.Wait()
	if created.Load() != 1 || !bytes.Equal(roots[0], roots[1]) {
		t.Fatalf("%d replicas created a root; same root: %t", created.Load(), bytes.Equal(roots[0], roots[1]))
	}
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), kube.CASecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Type != kube.CASecretType {
		t.Errorf("type %q", sec.Type)
	}
	for _, k := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "key.pem", "root-cert.pem"} {
		if _, ok := sec.Data[k]; !ok {
			t.Errorf("istio-ca-secret lacks %s", k)
		}
	}
}

func TestPluggedInHotReload(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "cacerts")
	rootA := catest.Root(t, ca.CAOptions{CommonName: "root A"})
	interA, _ := ca.NewIntermediate(rootA, ca.CAOptions{CommonName: "intermediate A", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, interA), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m, found, err := kube.LoadPluggedIn(ctx, apiserver.Client, ns, time.Now())
	if err != nil || !found || !m.Cert.Equal(interA.Cert) {
		t.Fatalf("LoadPluggedIn: found %t, %v", found, err)
	}
	a := catest.Authority(t, m)
	changed := make(chan struct{}, 4)
	a.Bundles().Subscribe(func([]*x509.Certificate) { changed <- struct{}{} }) // root B replaces root A
	w := &kube.PluggedInCA{Client: apiserver.Client, Namespace: ns, Authority: a}
	go func() { _ = w.Run(ctx) }()

	rootB := catest.Root(t, ca.CAOptions{CommonName: "root B"})
	sec, _ := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, kube.PluggedSecretName, metav1.GetOptions{})
	upd := kubetest.CacertsSecret(ns, rootB)
	upd.ResourceVersion = sec.ResourceVersion
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("the new cacerts were not picked up")
	}
	iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: catest.ID("a", "x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Cert.CheckSignatureFrom(rootB.Cert); err != nil {
		t.Fatalf("new leaves do not chain to the new CA: %v", err)
	}
	// A broken update is refused and the current CA kept.
	sec, _ = apiserver.Client.CoreV1().Secrets(ns).Get(ctx, kube.PluggedSecretName, metav1.GetOptions{})
	sec.Data["ca-key.pem"] = []byte("not a key")
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if !a.Material().Cert.Equal(rootB.Cert) {
		t.Fatal("a broken cacerts update replaced the CA")
	}
}

// startedWithCacerts is a replica's startup with a plugged-in CA: cacerts
// created in a new namespace, read, and recorded (as serve does).
func startedWithCacerts(t *testing.T, prefix string) (string, *ca.Material) {
	t.Helper()
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, prefix)
	root := catest.Root(t, ca.CAOptions{CommonName: "plugged root"})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, root), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m, found, err := kube.LoadPluggedIn(ctx, apiserver.Client, ns, time.Now())
	if err != nil || !found {
		t.Fatalf("LoadPluggedIn: found %t, %v", found, err)
	}
	if err := kube.RecordPluggedIn(ctx, apiserver.Client, ns, m); err != nil {
		t.Fatal(err)
	}
	return ns, m
}

// TestPluggedInDeletedBeforeWatch: cacerts is deleted after the replica
// read it and before its watch listed (no delete event reaches the
// watch). The deletion is still reported, and the CA kept.
func TestPluggedInDeletedBeforeWatch(t *testing.T) {
	ctx := kubetest.Context(t)
	ns, m := startedWithCacerts(t, "cacerts-gone")
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, kube.PluggedSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, m)
	var logs testkit.Buffer
	w := &kube.PluggedInCA{Client: apiserver.Client, Namespace: ns, Authority: a, Plugged: true, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	go func() { _ = w.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(logs.String(), "secret "+ns+"/cacerts deleted: this replica keeps signing") {
			return errors.New("no report of the deletion")
		}
		return nil
	})
	if !a.Material().Cert.Equal(m.Cert) {
		t.Fatal("the deletion changed the CA")
	}
}

// TestPluggedInSwitchBeforeWatch: the operator confirms the switch to the
// self-signed CA (cacerts and its record deleted) after the replica read
// cacerts and before its watches listed. The replica switches like the
// others, instead of signing under the old root alone.
func TestPluggedInSwitchBeforeWatch(t *testing.T) {
	ctx := kubetest.Context(t)
	ns, m := startedWithCacerts(t, "cacerts-switch")
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, kube.PluggedSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := apiserver.Client.CoreV1().ConfigMaps(ns).Delete(ctx, kube.CASourceConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	self := catest.Root(t, ca.CAOptions{CommonName: "self-signed root"})
	a := catest.Authority(t, m)
	w := &kube.PluggedInCA{Client: apiserver.Client, Namespace: ns, Authority: a, Plugged: true,
		SelfSigned: func(context.Context) (*ca.Material, error) { return self, nil }}
	go func() { _ = w.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !a.Material().Cert.Equal(self.Cert) {
			return errors.New("still signing with the plugged-in CA")
		}
		return nil
	})
}

func TestBundleConfigMaps(t *testing.T) {
	ctx := kubetest.Context(t)
	bundle := []byte("-----BEGIN CERTIFICATE-----\nfake bundle for the publisher test\n-----END CERTIFICATE-----\n")
	var cur atomic.Pointer[[]byte]
	cur.Store(&bundle)
	p := &kube.BundlePublisher{Client: apiserver.Client, Bundle: func() []byte { return *cur.Load() }}
	go func() { _ = p.Run(ctx) }()
	ns := apiserver.Namespace(t, "bundle")
	cms := apiserver.Client.CoreV1().ConfigMaps(ns)
	want := func(b []byte) func() error {
		return func() error {
			cm, err := cms.Get(ctx, kube.BundleConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cm.Data[kube.BundleKey] != string(b) || len(cm.Data) != 1 {
				return fmt.Errorf("data = %v", cm.Data)
			}
			return nil
		}
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	cm, _ := cms.Get(ctx, kube.BundleConfigMap, metav1.GetOptions{})
	cm.Data[kube.BundleKey] = "tampered"
	cm.Data["extra"] = "x"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	if err := cms.Delete(ctx, kube.BundleConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	next := append([]byte(nil), bundle...)
	next = append(next, "# second root\n"...)
	cur.Store(&next)
	p.Changed(nil)
	kubetest.Eventually(t, 20*time.Second, want(next))
}

func TestSASecretsLifecycle(t *testing.T) {
	ctx := kubetest.Context(t)
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}), func(c *ca.Config) { c.Backdate = time.Second })
	ctrl := &kube.SASecrets{Client: apiserver.Client, Authority: a, TTL: 8 * time.Second}
	go func() { _ = ctrl.Run(ctx) }()
	ns := apiserver.Namespace(t, "sas")
	apiserver.ServiceAccount(t, ns, "flaskapp")
	secrets := apiserver.Client.CoreV1().Secrets(ns)
	get := func() (*corev1.Secret, error) { return secrets.Get(ctx, "istio.flaskapp", metav1.GetOptions{}) }

	var first *corev1.Secret
	kubetest.Eventually(t, 20*time.Second, func() (err error) { first, err = get(); return err })
	if first.Type != kube.WorkloadType || first.Annotations[kube.SAAnnotation] != "flaskapp" {
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
	n.Labels[kube.SASecretsOptOutLabel] = "disabled"
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
	n.Labels[kube.SASecretsOptOutLabel] = "disabled"
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
