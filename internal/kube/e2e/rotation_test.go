package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/testkit"
)

// bundleRoots reads the roots of ns's istio-ca-root-cert.
func bundleRoots(t *testing.T, ns string) []*x509.Certificate {
	t.Helper()
	cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(context.Background(), rootcert.ConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	roots, _ := ca.ParseCerts([]byte(cm.Data[rootcert.Key]))
	return roots
}

// kubeRotate runs 'warden ca rotate --kubernetes' against ns; a failure
// shows the replicas' logs.
func kubeRotate(t *testing.T, ns string, logs ...*testkit.Buffer) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		code := app.Run(context.Background(), append([]string{"ca", "rotate", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns}, args...), &out, &errOut)
		if code != 0 {
			var all strings.Builder
			for i, l := range logs {
				fmt.Fprintf(&all, "\nreplica %d:\n%s", i+1, l.String())
			}
			t.Fatalf("ca rotate %s: %d\n%s%s%s", strings.Join(args, " "), code, out.String(), errOut.String(), all.String())
		}
		return out.String()
	}
}

// waitBundle waits until the leader has published a one-root bundle to ns.
func waitBundle(t *testing.T, ns string) {
	t.Helper()
	kubetest.Eventually(t, 30*time.Second, func() error {
		if len(bundleRoots(t, ns)) != 1 {
			return fmt.Errorf("no bundle published yet")
		}
		return nil
	})
}

type replica struct {
	addr string
	logs *testkit.Buffer
	stop func()
}

// twoReplicas starts replica-a (the leader, once it has published the
// bundle to a workload namespace with service account cart) and
// replica-b of an install in a namespace of its own, with no rotation
// grace and no automatic rotation.
func twoReplicas(t *testing.T) (ns, shop string, a, b replica) {
	t.Helper()
	ns = apiserver.Namespace(t, "warden")
	shop = apiserver.Namespace(t, "shop")
	apiserver.ServiceAccount(t, shop, "cart")
	flags := []string{"--rotation-grace", "0s", "--auto-rotate-root", "0", "--sa-secrets"}
	a.addr, a.logs, a.stop = startServeWith(t, ns, "replica-a", flags...)
	waitBundle(t, shop)
	b.addr, b.logs, b.stop = startServeWith(t, ns, "replica-b", flags...)
	return ns, shop, a, b
}

// TestKubeRotationResumesAfterLeaderChange: two replicas; an operator
// publishes a new root with 'warden ca rotate --kubernetes' (the leader
// takes the request through the API server, both replicas follow), the
// leader goes away between publish and activate, and the new leader
// activates and retires. The workloads' ConfigMap and istio.<sa> Secret
// hold the right roots at each step, a certificate signed after
// activation chains to the new root, and istio-ca-secret ends as the new
// CA.
func TestKubeRotationResumesAfterLeaderChange(t *testing.T) {
	ctx := kubetest.Context(t)
	ns, shop, a, b := twoReplicas(t)
	logsA, stopA, addrB, logsB := a.logs, a.stop, b.addr, b.logs
	oldSec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldRoots, _ := ca.ParseCerts(oldSec.Data["root-cert.pem"])
	rotate := kubeRotate(t, ns, logsA, logsB)

	out := rotate("publish")
	if !strings.Contains(out, "phase: published") || !strings.Contains(out, "configmaps:") {
		t.Fatalf("publish:\n%s", out)
	}
	nextSec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, rotationstore.NextCASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newRoots, _ := ca.ParseCerts(nextSec.Data["root-cert.pem"])
	kubetest.Eventually(t, 20*time.Second, func() error {
		if r := bundleRoots(t, shop); len(r) != 2 || !r[0].Equal(oldRoots[0]) || !r[1].Equal(newRoots[0]) {
			return fmt.Errorf("the ConfigMap holds %d roots, want old then new", len(r))
		}
		sec, err := apiserver.Client.CoreV1().Secrets(shop).Get(ctx, "istio.cart", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if r, _ := ca.ParseCerts(sec.Data["root-cert.pem"]); len(r) != 2 {
			return fmt.Errorf("istio.cart holds %d roots", len(r))
		}
		return nil
	})
	kubetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logsB.String(), "following the leader") {
			return fmt.Errorf("replica b did not follow the published phase")
		}
		return nil
	})

	// The leader goes between publish and activate.
	stopA()
	// The new leader takes the request, and activates once it has seen
	// that every consumer holds the new root (its publisher starts with
	// its leadership).
	rotate("activate")
	if !strings.Contains(logsB.String(), "elected leader") {
		t.Fatalf("replica b did not take over:\n%s", logsB.String())
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if out = rotate("--status"); !strings.Contains(out, "phase: activated") {
			return fmt.Errorf("not activated:\n%s", out)
		}
		return nil
	})
	// Replica b signs under the new root.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.pem"), oldSec.Data["root-cert.pem"], 0o600)
	os.WriteFile(filepath.Join(dir, "token"), []byte(apiserver.Token(t, shop, "cart", "istio-ca")), 0o600)
	var o, e bytes.Buffer
	if code := app.Run(ctx, []string{"cert", "request", "--ca", addrB, "--root-cert", filepath.Join(dir, "root.pem"), "--token-file", filepath.Join(dir, "token"), "--out", filepath.Join(dir, "svid")}, &o, &e); code != 0 {
		t.Fatalf("cert request after activation: %s%s", o.String(), e.String())
	}
	chainPEM, _ := os.ReadFile(filepath.Join(dir, "svid", "cert-chain.pem"))
	chain, _ := ca.ParseCerts(chainPEM)
	if err := chain[0].CheckSignatureFrom(newRoots[0]); err != nil {
		t.Fatalf("a certificate issued after activation is not signed by the new root: %v", err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if r := bundleRoots(t, shop); len(r) != 2 || !r[0].Equal(newRoots[0]) {
			return fmt.Errorf("after activation the ConfigMap's first root is not the new one")
		}
		return nil
	})

	out = rotate("--force", "retire")
	if !strings.Contains(out, "phase: none") || !strings.Contains(out, "signing root: sha256 "+ca.Fingerprint(newRoots[0])) {
		t.Fatalf("retire:\n%s", out)
	}
	sec, _ := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{})
	if r, _ := ca.ParseCerts(sec.Data["root-cert.pem"]); len(r) != 1 || !r[0].Equal(newRoots[0]) {
		t.Fatal("istio-ca-secret is not the new CA after retirement")
	}
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, rotationstore.NextCASecret, metav1.GetOptions{}); err == nil {
		t.Error("the prepared CA's Secret is left after retirement")
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if r := bundleRoots(t, shop); len(r) != 1 || !r[0].Equal(newRoots[0]) {
			return fmt.Errorf("the ConfigMap holds %d roots after retirement", len(r))
		}
		return nil
	})
}

// TestKubeRotationWaitsForOtherReplicasStreams: a stream on the replica
// that does not lead took the bundle before the rotation and never ACKs
// the new one: the leader's activation waits for it, named through that
// replica's report; once the stream is gone, activation proceeds.
func TestKubeRotationWaitsForOtherReplicasStreams(t *testing.T) {
	ctx := kubetest.Context(t)
	ns, shop, _, b := twoReplicas(t)
	addrB := b.addr
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	closeStream := testkit.SilentBundleStream(t, addrB, sec.Data["root-cert.pem"], apiserver.Token(t, shop, "cart", "istio-ca"))
	rotate := kubeRotate(t, ns)
	rotate("activate")
	var status string
	kubetest.Eventually(t, 20*time.Second, func() error {
		status = rotate("--status")
		if !strings.Contains(status, "missing: replica replica-b: spiffe://cluster.local/ns/"+shop+"/sa/cart (sds stream") {
			return fmt.Errorf("the silent stream on replica b is not named:\n%s", status)
		}
		return nil
	})
	if !strings.Contains(status, "phase: published") {
		t.Fatalf("activated although a stream on another replica lacks the new root:\n%s", status)
	}
	closeStream()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if status = rotate("--status"); !strings.Contains(status, "phase: activated") {
			return fmt.Errorf("not activated:\n%s", status)
		}
		return nil
	})
}

// TestKubeRotationHeldByPartitionedReplica: replica b, whose path to the
// API server is blackholed while it keeps serving an agent's stream that
// holds only the old root, stops reporting. A silent replica whose pod
// still runs holds activation (--status names it), however long it stays
// silent; once its pod is gone, its report is removed and activation
// goes on.
func TestKubeRotationHeldByPartitionedReplica(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	apiserver.ServiceAccount(t, shop, "cart")
	for _, name := range []string{"replica-a", "replica-b"} { // the replicas' pods, as a Deployment's
		if _, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{AutomountServiceAccountToken: ptr(false), Containers: []corev1.Container{{Name: "warden", Image: "warden"}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	flags := []string{"--rotation-grace", "0s", "--auto-rotate-root", "0"}
	_, logsA, _ := startServeWith(t, ns, "replica-a", flags...)
	waitBundle(t, shop)
	link := apiserver.Link(t)
	addrB, logsB, _ := startServeWith(t, ns, "replica-b", append(flags, "--kubeconfig", link.Kubeconfig)...)
	t.Cleanup(func() { link.Restore(t) }) // b stops cleanly
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testkit.SilentBundleStream(t, addrB, sec.Data["root-cert.pem"], apiserver.Token(t, shop, "cart", "istio-ca"))
	rotate := kubeRotate(t, ns, logsA, logsB)
	rotate("publish")
	kubetest.Eventually(t, 30*time.Second, func() error {
		if st := rotate("--status"); !strings.Contains(st, "replica replica-b: spiffe://cluster.local/ns/"+shop+"/sa/cart (sds stream") {
			return fmt.Errorf("replica b's stream is not reported yet:\n%s", st)
		}
		return nil
	})
	link.Blackhole()
	rotate("activate")
	var status string
	kubetest.Eventually(t, 60*time.Second, func() error {
		if status = rotate("--status"); !strings.Contains(status, "replica replica-b (silent for") || !strings.Contains(status, "its pod still runs") {
			return fmt.Errorf("the silent replica is not named:\n%s", status)
		}
		return nil
	})
	if !strings.Contains(status, "phase: published") {
		t.Fatalf("activated past a silent replica whose pod runs:\n%s", status)
	}
	// Its pod goes (the node died, kubectl delete pod): it is gone.
	if err := apiserver.Client.CoreV1().Pods(ns).Delete(ctx, "replica-b", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		if status = rotate("--status"); !strings.Contains(status, "phase: activated") {
			return fmt.Errorf("not activated once replica b's pod is gone:\n%s", status)
		}
		return nil
	})
	if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, rotationstore.ConfigMap+"-replica-b", metav1.GetOptions{}); err == nil {
		t.Error("the report of replica b, whose pod is gone, is still there")
	}
}

// runningPod creates pod name in ns with labels, in phase Running (as
// the kubelet would report it; the test API server runs none).
func runningPod(t *testing.T, ns, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	pod, err := apiserver.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: ptr(false), Containers: []corev1.Container{{Name: "warden", Image: "warden"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	if _, err := apiserver.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeRotationHeldByReplicaPartitionedBeforeIt: replicas report only
// during a rotation, so replica b, cut off from the API server before the
// rotation starts, never reports. The leader knows it by its pod (the
// running pods with the leader's own pod's labels, whichever ReplicaSet
// they belong to mid-rollout) and holds activation, naming it, until its
// pod is gone.
func TestKubeRotationHeldByReplicaPartitionedBeforeIt(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	runningPod(t, ns, "replica-a", map[string]string{"app.kubernetes.io/name": "warden", "pod-template-hash": "new"})
	runningPod(t, ns, "replica-b", map[string]string{"app.kubernetes.io/name": "warden", "pod-template-hash": "old"})
	runningPod(t, ns, "bystander", map[string]string{"app.kubernetes.io/name": "something-else"})
	flags := []string{"--rotation-grace", "0s", "--auto-rotate-root", "0"}
	_, logsA, _ := startServeWith(t, ns, "replica-a", flags...)
	waitBundle(t, shop)
	link := apiserver.Link(t)
	_, logsB, _ := startServeWith(t, ns, "replica-b", append(flags, "--kubeconfig", link.Kubeconfig)...)
	t.Cleanup(func() { link.Restore(t) }) // b stops cleanly
	time.Sleep(2 * time.Second)           // b has synced its watches
	link.Blackhole()

	rotate := kubeRotate(t, ns, logsA, logsB)
	rotate("activate")
	var status string
	kubetest.Eventually(t, 30*time.Second, func() error {
		if status = rotate("--status"); !strings.Contains(status, "missing: replica replica-b (its pod runs, and it has not reported on the new root") {
			return fmt.Errorf("the replica that never reported is not named:\n%s", status)
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	if status = rotate("--status"); !strings.Contains(status, "phase: published") || strings.Contains(status, "bystander") {
		t.Fatalf("activated past a replica whose pod runs, or counted another workload's pod:\n%s", status)
	}
	if err := apiserver.Client.CoreV1().Pods(ns).Delete(ctx, "replica-b", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		if status = rotate("--status"); !strings.Contains(status, "phase: activated") {
			return fmt.Errorf("not activated once replica b's pod is gone:\n%s", status)
		}
		return nil
	})
}
