package casecret_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/casecret"
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
			store := &casecret.Store{Client: apiserver.Client, Namespace: ns}
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
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Type != casecret.Type {
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
	m, found, err := casecret.LoadPluggedIn(ctx, apiserver.Client, ns, time.Now())
	if err != nil || !found || !m.Cert.Equal(interA.Cert) {
		t.Fatalf("LoadPluggedIn: found %t, %v", found, err)
	}
	a := catest.Authority(t, m)
	changed := make(chan struct{}, 4)
	a.Bundles().Subscribe(func([]*x509.Certificate) { changed <- struct{}{} }) // root B replaces root A
	w := &casecret.PluggedIn{Client: apiserver.Client, Namespace: ns, Authority: a}
	go func() { _ = w.Run(ctx) }()

	rootB := catest.Root(t, ca.CAOptions{CommonName: "root B"})
	sec, _ := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.PluggedName, metav1.GetOptions{})
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
	sec, _ = apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.PluggedName, metav1.GetOptions{})
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
	m, found, err := casecret.LoadPluggedIn(ctx, apiserver.Client, ns, time.Now())
	if err != nil || !found {
		t.Fatalf("LoadPluggedIn: found %t, %v", found, err)
	}
	if err := casecret.RecordPluggedIn(ctx, apiserver.Client, ns, m); err != nil {
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
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, casecret.PluggedName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, m)
	var logs testkit.Buffer
	w := &casecret.PluggedIn{Client: apiserver.Client, Namespace: ns, Authority: a, Plugged: true, Log: slog.New(slog.NewTextHandler(&logs, nil))}
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
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, casecret.PluggedName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := apiserver.Client.CoreV1().ConfigMaps(ns).Delete(ctx, casecret.SourceConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	self := catest.Root(t, ca.CAOptions{CommonName: "self-signed root"})
	a := catest.Authority(t, m)
	w := &casecret.PluggedIn{Client: apiserver.Client, Namespace: ns, Authority: a, Plugged: true,
		SelfSigned: func(context.Context) (*ca.Material, error) { return self, nil }}
	go func() { _ = w.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !a.Material().Cert.Equal(self.Cert) {
			return errors.New("still signing with the plugged-in CA")
		}
		return nil
	})
}

// TestIstiodEraSecretLayouts: istio-ca-secret as Citadel and istiod
// releases wrote it — root-cert.pem, cert-chain.pem and key.pem empty, or
// absent — is read as istiod reads it: the self-signed ca-cert.pem is the
// root. A ca-cert.pem that is not self-signed takes its root from the end
// of cert-chain.pem; with neither, the error says what is missing and how
// an empty root-cert.pem is read.
func TestIstiodEraSecretLayouts(t *testing.T) {
	root := catest.Root(t, ca.CAOptions{CommonName: "Istio CA", Organization: "cluster.local"})
	files, err := root.Encode()
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, ca.CAOptions{CommonName: "intermediate", Organization: "cluster.local", TTL: 24 * time.Hour, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	interFiles, err := inter.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		data     map[string][]byte
		wantRoot *x509.Certificate
		wantErr  string
	}{
		{"citadel and istiod: root-cert.pem, cert-chain.pem and key.pem empty", map[string][]byte{
			"ca-cert.pem": files.CACert, "ca-key.pem": files.CAKey, "cert-chain.pem": {}, "key.pem": {}, "root-cert.pem": {}}, root.Roots[0], ""},
		{"only ca-cert.pem and ca-key.pem", map[string][]byte{"ca-cert.pem": files.CACert, "ca-key.pem": files.CAKey}, root.Roots[0], ""},
		{"an intermediate with its chain", map[string][]byte{
			"ca-cert.pem": interFiles.CACert, "ca-key.pem": interFiles.CAKey, "cert-chain.pem": interFiles.CertChain, "root-cert.pem": {}}, root.Roots[0], ""},
		{"an intermediate without a chain", map[string][]byte{"ca-cert.pem": interFiles.CACert, "ca-key.pem": interFiles.CAKey},
			nil, "lacks [root-cert.pem] (or tls.crt, tls.key, ca.crt); an empty root-cert.pem is read from ca-cert.pem when that is self-signed, else from the last certificate of cert-chain.pem"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := apiserver.Namespace(t, "istiod-era")
			if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(kubetest.Context(t), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: casecret.Name},
				Type: "istio.io/ca-root", Data: c.data}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// As serve reads it: the store, then the material.
			m, _, err := ca.LoadOrCreate(kubetest.Context(t), &casecret.Store{Client: apiserver.Client, Namespace: ns}, ca.SystemClock{}, func() (*ca.Material, error) {
				t.Fatal("a new root was made although istio-ca-secret exists")
				return nil, nil
			})
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("%v, want an error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Roots) != 1 || !m.Roots[0].Equal(c.wantRoot) {
				t.Fatalf("roots %v, want Istio's root", m.Roots)
			}
		})
	}
}
