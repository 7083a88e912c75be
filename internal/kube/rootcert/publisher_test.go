package rootcert_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
)

func TestBundleConfigMaps(t *testing.T) {
	ctx := kubetest.Context(t)
	bundle := []byte("-----BEGIN CERTIFICATE-----\nfake bundle for the publisher test\n-----END CERTIFICATE-----\n")
	var cur atomic.Pointer[[]byte]
	cur.Store(&bundle)
	p := &rootcert.Publisher{Client: apiserver.Client, Bundle: func() []byte { return *cur.Load() }}
	go func() { _ = p.Run(ctx) }()
	ns := apiserver.Namespace(t, "bundle")
	cms := apiserver.Client.CoreV1().ConfigMaps(ns)
	want := func(b []byte) func() error {
		return func() error {
			cm, err := cms.Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cm.Data[rootcert.Key] != string(b) || len(cm.Data) != 1 {
				return fmt.Errorf("data = %v", cm.Data)
			}
			return nil
		}
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	cm, _ := cms.Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
	cm.Data[rootcert.Key] = "tampered"
	cm.Data["extra"] = "x"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	if err := cms.Delete(ctx, rootcert.ConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, want(bundle))

	next := append([]byte(nil), bundle...)
	next = append(next, "# second root\n"...)
	cur.Store(&next)
	p.Changed(nil)
	kubetest.Eventually(t, 20*time.Second, want(next))
}
