package webhook_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/webhook"
	"github.com/wardenmesh/warden/internal/testkit"
)

func root(t *testing.T, name string) (pem []byte, fp string) {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{CommonName: name, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	return ca.EncodeCerts(m.Roots...), ca.Fingerprint(m.Roots[0])
}

// hook is a webhook calling Service ns/name at path /validate, on a group
// nothing in these tests writes (the API server really calls webhooks).
func hook(name string, svc webhook.Ref, caBundle []byte) admregv1.ValidatingWebhook {
	path, none := "/validate", admregv1.SideEffectClassNone
	return admregv1.ValidatingWebhook{
		Name:                    name,
		ClientConfig:            admregv1.WebhookClientConfig{Service: &admregv1.ServiceReference{Namespace: svc.Namespace, Name: svc.Name, Path: &path}, CABundle: caBundle},
		Rules:                   []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create}, Rule: admregv1.Rule{APIGroups: []string{"unused.warden.test"}, APIVersions: []string{"*"}, Resources: []string{"*"}}}},
		SideEffects:             &none,
		AdmissionReviewVersions: []string{"v1"},
	}
}

func createVWC(t *testing.T, name string, hooks ...admregv1.ValidatingWebhook) {
	t.Helper()
	cl := apiserver.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	if _, err := cl.Create(context.Background(), &admregv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}, Webhooks: hooks}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func getVWC(t *testing.T, name string) *admregv1.ValidatingWebhookConfiguration {
	t.Helper()
	w, err := apiserver.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestConfigurationsKeepCABundle: the webhooks that call warden's Service
// get the trust bundle as their caBundle, follow it when it changes, and
// are repaired when someone else edits it; a webhook calling another
// Service is left alone. Missing says who lacks a root, for a rotation.
func TestConfigurationsKeepCABundle(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "hooks")
	warden := webhook.Ref{Namespace: ns, Name: webhook.ServiceName}
	other := webhook.Ref{Namespace: ns, Name: "someone-else"}
	oldPEM, oldFP := root(t, "old")
	newPEM, newFP := root(t, "new")
	foreign := []byte("-----BEGIN CERTIFICATE-----\nnot warden's\n-----END CERTIFICATE-----\n")
	name := "keep-" + ns
	createVWC(t, name, hook("a.warden.test", warden, nil), hook("b.warden.test", other, foreign))
	var cur atomic.Pointer[[]byte]
	cur.Store(&oldPEM)
	logs := &testkit.Buffer{}
	c := &webhook.Configurations{Client: apiserver.Client, Bundle: func() []byte { return *cur.Load() }, Warden: warden, Owner: ns, Log: slog.New(slog.NewTextHandler(logs, nil))}
	if total, missing := c.Missing(oldFP); total != 1 || len(missing) != 1 || !strings.Contains(missing[0], "this replica does not keep them") {
		t.Fatalf("before running: %d, %v", total, missing)
	}
	go func() { _ = c.Run(ctx) }()
	holds := func(want []byte) func() error {
		return func() error {
			w := getVWC(t, name)
			if !bytes.Equal(w.Webhooks[0].ClientConfig.CABundle, want) {
				return fmt.Errorf("caBundle %q", w.Webhooks[0].ClientConfig.CABundle)
			}
			if !bytes.Equal(w.Webhooks[1].ClientConfig.CABundle, foreign) || w.Webhooks[1].ClientConfig.Service.Name != "someone-else" {
				return fmt.Errorf("the other Service's webhook was changed: %+v", w.Webhooks[1].ClientConfig)
			}
			return nil
		}
	}
	kubetest.Eventually(t, 20*time.Second, holds(oldPEM))
	if w := getVWC(t, name); w.Annotations["warden.io/owner"] != ns {
		t.Errorf("annotations %v", w.Annotations)
	}
	kubetest.Eventually(t, 10*time.Second, func() error {
		if total, missing := c.Missing(oldFP); total != 1 || len(missing) != 0 {
			return fmt.Errorf("Missing(old) = %d, %v", total, missing)
		}
		return nil
	})
	if total, missing := c.Missing(newFP); total != 1 || strings.Join(missing, ",") != "validatingwebhookconfiguration "+name+" webhook a.warden.test" {
		t.Fatalf("Missing(new) = %d, %v", total, missing)
	}

	// A rotation publishes both roots.
	both := append(append([]byte(nil), newPEM...), oldPEM...)
	cur.Store(&both)
	c.Changed(nil)
	kubetest.Eventually(t, 20*time.Second, holds(both))
	kubetest.Eventually(t, 10*time.Second, func() error {
		if _, missing := c.Missing(newFP); len(missing) != 0 {
			return fmt.Errorf("Missing(new) = %v", missing)
		}
		return nil
	})

	// Someone else writes the caBundle: repaired.
	w := getVWC(t, name)
	w.Webhooks[0].ClientConfig.CABundle = foreign
	if _, err := apiserver.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, w, metav1.UpdateOptions{FieldManager: "someone"}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, holds(both))
	testkit.WaitLog(t, logs, "repaired a validating webhook configuration another writer changed", 5*time.Second)

	// warden check: current.
	res := c.Check(ctx, newFP, time.Now())
	if len(res) != 1 || res[0].Status != check.OK || res[0].Message != "1 validating webhooks call warden and trust its root" {
		t.Errorf("check: %+v", res)
	}
	if res := c.Check(ctx, "0000", time.Now()); len(res) != 1 || res[0].Status != check.Error || !strings.Contains(res[0].Message, name+"/a.warden.test call warden but their caBundle lacks the signing root") {
		t.Errorf("check of another root: %+v", res)
	}
}

// TestConfigurationsTakeIstiodsPlace: in istiod's place, the validating
// webhooks that call istiod are pointed at warden's Service (port 443,
// Istio's path kept) and get the bundle; an injector calling istiod is
// not warden's to serve: it is left as it is, logged, and reported by
// check, which also reports validating webhooks still calling istiod's
// ExternalName.
func TestConfigurationsTakeIstiodsPlace(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	istioNS := apiserver.Namespace(t, "istio")
	warden := webhook.Ref{Namespace: ns, Name: webhook.ServiceName}
	istiod := webhook.Ref{Namespace: istioNS, Name: "istiod"}
	pem, fp := root(t, "root")
	name := "istiod-" + ns
	createVWC(t, name, hook("rev.validation.istio.io", istiod, []byte("istiod's own root")))
	// istiod's Service, as deploy/istiod-compat leaves it.
	if _, err := apiserver.Client.CoreV1().Services(istioNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "warden." + ns + ".svc.cluster.local"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	injector := "injector-" + ns
	path, none, fail := "/inject", admregv1.SideEffectClassNone, admregv1.Fail
	mcl := apiserver.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := mcl.Create(ctx, &admregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: injector}, Webhooks: []admregv1.MutatingWebhook{{
		Name:         "namespace.sidecar-injector.istio.io",
		ClientConfig: admregv1.WebhookClientConfig{Service: &admregv1.ServiceReference{Namespace: istioNS, Name: "istiod", Path: &path}},
		Rules:        []admregv1.RuleWithOperations{{Operations: []admregv1.OperationType{admregv1.Create}, Rule: admregv1.Rule{APIGroups: []string{"unused.warden.test"}, APIVersions: []string{"*"}, Resources: []string{"*"}}}},
		SideEffects:  &none, FailurePolicy: &fail, AdmissionReviewVersions: []string{"v1"},
	}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mcl.Delete(context.Background(), injector, metav1.DeleteOptions{}) })

	c := &webhook.Configurations{Client: apiserver.Client, Bundle: func() []byte { return pem }, Warden: warden, Istiod: &istiod, Owner: ns}
	res := c.Check(ctx, fp, time.Now())
	var msgs []string
	for _, r := range res {
		msgs = append(msgs, string(r.Status)+": "+r.Message)
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		"error: validating webhooks " + name + "/rev.validation.istio.io call istiod." + istioNS + ", an ExternalName standing for warden that the API server cannot follow",
		"error: MutatingWebhookConfiguration " + injector + ": webhook namespace.sidecar-injector.istio.io calls istiod." + istioNS + ", which warden replaces and does not serve",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("check before the leader ran lacks %q:\n%s", want, all)
		}
	}
	if total, missing := c.Missing(fp); total != 1 || len(missing) != 1 {
		t.Fatalf("before running: %d, %v", total, missing)
	}

	logs := &testkit.Buffer{}
	c.Log = slog.New(slog.NewTextHandler(logs, nil))
	go func() { _ = c.Run(ctx) }()
	kubetest.Eventually(t, 20*time.Second, func() error {
		cc := getVWC(t, name).Webhooks[0].ClientConfig
		if s := cc.Service; s.Namespace != ns || s.Name != "warden" || s.Port == nil || *s.Port != 443 || s.Path == nil || *s.Path != "/validate" || !bytes.Equal(cc.CABundle, pem) {
			return fmt.Errorf("clientConfig %+v, service %+v", cc, cc.Service)
		}
		return nil
	})
	kubetest.Eventually(t, 10*time.Second, func() error {
		if total, missing := c.Missing(fp); total != 1 || len(missing) != 0 {
			return fmt.Errorf("Missing = %d, %v", total, missing)
		}
		return nil
	})
	m, err := mcl.Get(ctx, injector, metav1.GetOptions{})
	if err != nil || m.Webhooks[0].ClientConfig.Service.Name != "istiod" {
		t.Fatalf("the injector was changed (%v): %+v", err, m.Webhooks[0].ClientConfig.Service)
	}
	for _, want := range []string{"pointed istiod's validating webhooks at warden", "MutatingWebhookConfiguration " + injector + ": webhook namespace.sidecar-injector.istio.io calls istiod." + istioNS} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	res = c.Check(ctx, fp, time.Now())
	msgs = msgs[:0]
	for _, r := range res {
		msgs = append(msgs, string(r.Status)+": "+r.Message)
	}
	if got := strings.Join(msgs, "\n"); !strings.HasPrefix(got, "ok: 1 validating webhooks call warden and trust its root\nerror: MutatingWebhookConfiguration "+injector) {
		t.Errorf("check after:\n%s", got)
	}
}
