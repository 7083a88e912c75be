package rootcert_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

func fakeBundle(name string) []byte {
	return []byte("-----BEGIN CERTIFICATE-----\n" + name + "\n-----END CERTIFICATE-----\n")
}

// writes counts the updates to a ConfigMap over a period, from its
// resourceVersion changes seen by polling.
func writes(t *testing.T, ctx context.Context, ns string, period time.Duration) (n int, last *corev1.ConfigMap) {
	t.Helper()
	rv := ""
	for end := time.Now().Add(period); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.ResourceVersion != rv {
			if rv != "" {
				n++
			}
			rv, last = cm.ResourceVersion, cm
		}
	}
	return n, last
}

// TestTwoInstallsDoNotFight: two warden installs in one cluster (two
// publishers with different owners and different roots) used to rewrite
// every istio-ca-root-cert against each other, thousands of times. Now
// the ConfigMap belongs to whichever wrote it first; the other leaves it
// alone and says so, loudly.
func TestTwoInstallsDoNotFight(t *testing.T) {
	ctx := kubetest.Context(t)
	var logA, logB testkit.Buffer
	a := &rootcert.Publisher{Client: apiserver.Client, Owner: "install-a", Bundle: func() []byte { return fakeBundle("root-a") },
		Log: slog.New(slog.NewTextHandler(&logA, nil))}
	go func() { _ = a.Run(ctx) }()
	ns := apiserver.Namespace(t, "twoinstalls")
	kubetest.Eventually(t, 20*time.Second, func() error {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Annotations[kube.OwnerAnnotation] != "install-a" {
			return fmt.Errorf("owner %q", cm.Annotations[kube.OwnerAnnotation])
		}
		return nil
	})
	b := &rootcert.Publisher{Client: apiserver.Client, Owner: "install-b", Bundle: func() []byte { return fakeBundle("root-b") },
		Log: slog.New(slog.NewTextHandler(&logB, nil))}
	go func() { _ = b.Run(ctx) }()
	n, cm := writes(t, ctx, ns, 3*time.Second)
	if n > 0 || !bytes.Equal([]byte(cm.Data[rootcert.Key]), fakeBundle("root-a")) {
		t.Errorf("the second install wrote the first's ConfigMap: %d writes in 3 s, bundle now %q", n, cm.Data[rootcert.Key])
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if !strings.Contains(logB.String(), "belongs to another warden install (warden.io/owner=install-a)") || !strings.Contains(logB.String(), "level=ERROR") {
			return fmt.Errorf("the second install did not report the conflict:\n%s", logB.String())
		}
		return nil
	})
	// Deleting the ConfigMap hands it to whichever install gets there
	// first; the other then backs off in turn.
	if err := apiserver.Client.CoreV1().ConfigMaps(ns).Delete(ctx, rootcert.ConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		_, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		return err
	})
	if n, _ := writes(t, ctx, ns, 2*time.Second); n > 1 {
		t.Errorf("after the deletion the installs wrote the ConfigMap %d times in 2 s", n)
	}
}

// TestPublisherBacksOffFromAnotherWriter: a controller that is not warden
// (as istiod would be) keeps rewriting the bundle; warden repairs it a few
// times, then stops, names the other writer, and tries again later.
func TestPublisherBacksOffFromAnotherWriter(t *testing.T) {
	ctx := kubetest.Context(t)
	var logs testkit.Buffer
	p := &rootcert.Publisher{Client: apiserver.Client, Owner: "install-a", Bundle: func() []byte { return fakeBundle("root-a") },
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))} // each repair is logged at DEBUG
	go func() { _ = p.Run(ctx) }()
	ns := apiserver.Namespace(t, "rogue")
	kubetest.Eventually(t, 20*time.Second, func() error {
		_, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		return err
	})
	// The other writer goes on until warden reports the fight (20 s at
	// most), and for a second after that: warden has stopped by then.
	const reported = "keeps being changed by another writer (last: rogue-ca)"
	rogueWrites := 0
	end := time.Now().Add(20 * time.Second)
	for ; time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if strings.Contains(logs.String(), reported) && time.Until(end) > time.Second {
			end = time.Now().Add(time.Second)
		}
		cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data[rootcert.Key] == "rogue" {
			continue
		}
		cm.Data[rootcert.Key] = "rogue"
		if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{FieldManager: "rogue-ca"}); err == nil {
			rogueWrites++
		}
	}
	repairs := strings.Count(logs.String(), "rewrote trust bundle")
	t.Logf("the other writer wrote %d times; warden repaired %d times", rogueWrites, repairs)
	if repairs > 4 {
		t.Errorf("warden kept fighting: %d repairs", repairs)
	}
	if !strings.Contains(logs.String(), reported) {
		t.Errorf("the fight was not reported with the other writer's name:\n%s", logs.String())
	}
}
