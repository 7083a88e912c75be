package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestTokenReviewOutageIsUnavailable: with the replica's path to the API
// server cut, a new workload's token cannot be reviewed: the workload is
// answered Unavailable, saying so, and it counts as the CA being
// unavailable, not as a forged token (warden_ca_authentication_unavailable_total,
// not citadel_server_authentication_failure_count). Once the path is back,
// the same token gets its certificate.
func TestTokenReviewOutageIsUnavailable(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	app1 := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, app1, "sleep")
	link := apiserver.Link(t)
	httpAddr := testkit.FreeAddr(t)
	addr, logs, _ := startServeWith(t, ns, "replica-a", "--kubeconfig", link.Kubeconfig, "--http-listen", httpAddr)
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("istio-ca-secret: %v\n%s", err, logs.String())
	}
	dir := t.TempDir()
	root, tok := filepath.Join(dir, "root.pem"), filepath.Join(dir, "token")
	os.WriteFile(root, sec.Data["root-cert.pem"], 0o600)
	os.WriteFile(tok, []byte(apiserver.Token(t, app1, "sleep", "istio-ca")), 0o600)
	request := func() (int, string) {
		var out bytes.Buffer
		code := app.Run(context.Background(), []string{"cert", "request", "--ca", addr, "--root-cert", root, "--token-file", tok, "--out", t.TempDir()}, &out, &out)
		return code, out.String()
	}
	metric := func(name string) float64 { return metricValue(t, "http://"+httpAddr+"/metrics", name) }

	link.Cut()
	code, out := request()
	if code != 1 || !strings.Contains(out, "code = Unavailable") || !strings.Contains(out, "the API server did not review the token") {
		t.Fatalf("cert request with the API server unreachable: exit %d\n%s", code, out)
	}
	if got := metric("warden_ca_authentication_unavailable_total"); got != 1 {
		t.Errorf("warden_ca_authentication_unavailable_total = %v, want 1", got)
	}
	if got := metric("citadel_server_authentication_failure_count"); got != 0 {
		t.Errorf("citadel_server_authentication_failure_count = %v, want 0: an outage is not a forged token", got)
	}
	if got := metric("warden_tokenreview_errors_total"); got != 1 {
		t.Errorf("warden_tokenreview_errors_total = %v, want 1", got)
	}

	link.Restore(t)
	kubetest.Eventually(t, 30*time.Second, func() error {
		if code, out := request(); code != 0 {
			return errors.New(out)
		}
		return nil
	})
}

// TestOutageLogsQuietly: a leader cut off from the API server for 20 s,
// with no rotation running, logs each error once (client-go's Lease
// retries every 2 s are limited to one line a minute), and nothing about
// rotation reports (before: a line every second).
func TestOutageLogsQuietly(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	link := apiserver.Link(t)
	_, logs, _ := startServeWith(t, ns, "replica-a", "--kubeconfig", link.Kubeconfig)
	waitBundle(t, ns)
	time.Sleep(2 * time.Second)
	from := len(logs.String())
	link.Cut()
	time.Sleep(20 * time.Second)
	during := logs.String()[from:]
	link.Restore(t)
	errorLine := regexp.MustCompile(`(?m)^time=\S+ level=ERROR msg="((?:[^"\\]|\\.)*)"`)
	count := map[string]int{}
	for _, m := range errorLine.FindAllStringSubmatch(during, -1) {
		count[m[1]]++
	}
	for msg, n := range count {
		if n > 1 || strings.Contains(msg, "root rotation") {
			t.Errorf("%d ERROR lines %q in 20 s of outage", n, msg)
		}
	}
	t.Logf("ERROR lines in 20 s of outage: %v", count)
}
