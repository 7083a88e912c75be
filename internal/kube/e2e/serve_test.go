package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

// startServe runs 'warden serve --kubernetes' with its state in ns and
// waits for its listener.
func startServe(t *testing.T, ns string) (string, *testkit.Buffer) {
	t.Helper()
	return startServeAs(t, ns, "replica-a")
}

// startServeAs is startServe for a named replica.
func startServeAs(t *testing.T, ns, replica string) (string, *testkit.Buffer) {
	t.Helper()
	addr, logs, _ := startServeWith(t, ns, replica)
	return addr, logs
}

// startServeWith is startServeAs with more flags; stop ends the replica
// early (as a rolled pod would go).
func startServeWith(t *testing.T, ns, replica string, extra ...string) (string, *testkit.Buffer, func()) {
	t.Helper()
	addr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &testkit.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, append([]string{"serve", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns,
			"--listen", addr, "--http-listen", "", "--replica-id", replica}, extra...), logs, logs)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("warden serve exited %d:\n%s", code, logs.String())
			}
		})
	}
	t.Cleanup(stop)
	kubetest.Eventually(t, 30*time.Second, func() error { return testkit.Serving(addr) })
	return addr, logs, stop
}

// TestServeKubernetesMode runs 'warden serve --kubernetes' against the
// test API server and gets a certificate with a TokenRequest token through
// 'warden cert request', as an operator would.
func TestServeKubernetesMode(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	app1 := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, app1, "sleep")
	httpAddr := testkit.FreeAddr(t)
	addr, logs, _ := startServeWith(t, ns, "replica-a", "--http-listen", httpAddr, "--sa-secrets")
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("istio-ca-secret: %v\n%s", err, logs.String())
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	os.WriteFile(root, sec.Data["root-cert.pem"], 0o600)
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte(apiserver.Token(t, app1, "sleep", "istio-ca")), 0o600)
	var out, errb bytes.Buffer
	code := app.Run(context.Background(), []string{"cert", "request", "--ca", addr, "--root-cert", root, "--token-file", tok, "--out", filepath.Join(dir, "svid")}, &out, &errb)
	if want := "spiffe://cluster.local/ns/" + app1 + "/sa/sleep\n"; code != 0 || !strings.HasPrefix(out.String(), want) {
		t.Fatalf("cert request: %d %s%s\nserver log:\n%s", code, out.String(), errb.String(), logs.String())
	}
	// The same token again is answered from the TokenReview cache; the
	// metrics say so.
	code = app.Run(context.Background(), []string{"cert", "request", "--ca", addr, "--root-cert", root, "--token-file", tok, "--out", filepath.Join(dir, "svid2")}, &out, &errb)
	if code != 0 {
		t.Fatalf("second cert request: %s", errb.String())
	}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"warden_tokenreview_seconds_count 1\n", "warden_tokenreview_cache_hits_total 1\n", "citadel_server_success_cert_issuance_count 2\n", "warden_tokenreview_failures_total 0\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", strings.TrimSpace(want))
		}
	}
	// The leader publishes the bundle to the workload's namespace.
	kubetest.Eventually(t, 30*time.Second, func() error {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(app1).Get(context.Background(), rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data[rootcert.Key] != string(sec.Data["root-cert.pem"]) {
			return os.ErrInvalid
		}
		return nil
	})
	// And the Citadel-style secret for the service account.
	kubetest.Eventually(t, 30*time.Second, func() error {
		_, err := apiserver.Client.CoreV1().Secrets(app1).Get(context.Background(), "istio.sleep", metav1.GetOptions{})
		return err
	})
}

// TestBindFailureWritesNothing: a replica that cannot bind its port fails
// before it writes shared state: no istio-ca-secret is created.
func TestBindFailureWritesNothing(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var logs testkit.Buffer
	code := app.Run(context.Background(), []string{"serve", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns,
		"--listen", busy.Addr().String(), "--http-listen", "", "--replica-id", "replica-a"}, &logs, &logs)
	if code != 1 || !strings.Contains(logs.String(), "CA API: listen tcp "+busy.Addr().String()) {
		t.Fatalf("serve on a busy port: %d\n%s", code, logs.String())
	}
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("istio-ca-secret after a failed bind: %v", err)
	}
}
