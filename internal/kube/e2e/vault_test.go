package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestVaultKubernetesAuth: docs/vault.md's Kubernetes-auth steps (kubectl
// and Vault's HTTP API) against this real API server and a real Vault;
// warden serve in Kubernetes mode logs in to Vault with its
// service-account token (Vault checks it with a TokenReview here), gets
// its intermediate, issues workload certificates chaining to Vault's root
// and publishes that root as the trust bundle. A role that does not
// exist, or a service account the role does not bind, stops warden at
// startup with Vault's reason. A root rotated in Vault is published to
// the namespaces' ConfigMaps beside the signing one (issue #28, defect
// 4), and 'ca rotate --kubernetes --status' reports it, while the steps
// asked by hand are refused at once.
func TestVaultKubernetesAuth(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	apiserver.ServiceAccount(t, ns, "warden")
	apiserver.ServiceAccount(t, ns, "intruder")
	app1 := apiserver.Namespace(t, "app")
	apiserver.ServiceAccount(t, app1, "sleep")

	v := vaulttest.Start(t)
	dir := t.TempDir()
	kubeCA := filepath.Join(dir, "kube-ca.pem")
	if err := os.WriteFile(kubeCA, apiserver.Config.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("PATH")
	if _, err := os.Stat(filepath.Join(apiserver.Assets, "kubectl")); err == nil {
		path = apiserver.Assets + string(os.PathListSeparator) + path
	}
	v.RunDoc(t, dir, []string{"KUBE_HOST=" + apiserver.Config.Host, "KUBE_CA_CERT=" + kubeCA, "WARDEN_NAMESPACE=" + ns,
		"KUBECONFIG=" + apiserver.Kubeconfig, "PATH=" + path}, "setup", "pki", "policy", "kubernetes")
	vaultRoot, err := os.ReadFile(filepath.Join(dir, "vault-root.pem"))
	if err != nil {
		t.Fatal(err)
	}

	jwt := filepath.Join(dir, "warden.jwt")
	os.WriteFile(jwt, []byte(apiserver.Token(t, ns, "warden")), 0o600)
	serveArgs := func(addr, role, tokenFile string) []string {
		return []string{"serve", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns,
			"--listen", addr, "--http-listen", "", "--replica-id", "replica-a",
			"--ca-upstream", "vault", "--vault-addr", v.Addr, "--vault-cacert", v.CACert,
			"--vault-auth", "kubernetes", "--vault-k8s-role", role, "--vault-k8s-token-file", tokenFile, "--vault-issuer-poll", "1s"}
	}

	// Refusals first: no CA comes up.
	intruder := filepath.Join(dir, "intruder.jwt")
	os.WriteFile(intruder, []byte(apiserver.Token(t, ns, "intruder")), 0o600)
	for _, tc := range []struct {
		name, role, jwt, want string
	}{
		{"wrong role", "nope", jwt, `warden serve: vault: kubernetes auth at auth/kubernetes (role "nope"): login refused (auth/kubernetes/login: 400 invalid role name "nope")`},
		{"unbound service account", "warden", intruder, `warden serve: vault: kubernetes auth at auth/kubernetes (role "warden"): login refused (auth/kubernetes/login: 403 service account name not authorized): the Vault role (--vault-k8s-role) does not bind this service account and namespace: see its bound_service_account_names and bound_service_account_namespaces`},
	} {
		var out bytes.Buffer
		code := app.Run(context.Background(), serveArgs(freeLocalAddr(t), tc.role, tc.jwt), &out, &out)
		if code != 1 || !strings.Contains(out.String(), tc.want+"\n") || strings.Contains(out.String(), "CA ready") {
			t.Errorf("%s: exit %d, output:\n%s\nwant:\n%s", tc.name, code, out.String(), tc.want)
		}
	}

	addr := freeLocalAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs testkit.Buffer
	done := make(chan int, 1)
	go func() { done <- app.Run(ctx, serveArgs(addr, "warden", jwt), &logs, &logs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("warden serve exited %d:\n%s", code, logs.String())
		}
	})
	kubetest.Eventually(t, 30*time.Second, func() error {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("warden serve exited %d:\n%s", code, logs.String())
		default:
		}
		return testkit.Serving(addr)
	})
	if !strings.Contains(logs.String(), `auth="kubernetes auth at auth/kubernetes (role \"warden\")" policies=default,warden`) {
		t.Errorf("no Kubernetes login in the log:\n%s", logs.String())
	}

	rootFile := filepath.Join(dir, "vault-root.pem")
	tok := filepath.Join(dir, "sleep.jwt")
	os.WriteFile(tok, []byte(apiserver.Token(t, app1, "sleep", "istio-ca")), 0o600)
	svid := filepath.Join(dir, "svid")
	var out, errb bytes.Buffer
	code := app.Run(context.Background(), []string{"cert", "request", "--ca", addr, "--root-cert", rootFile, "--token-file", tok, "--out", svid}, &out, &errb)
	if want := "spiffe://cluster.local/ns/" + app1 + "/sa/sleep\n"; code != 0 || !strings.HasPrefix(out.String(), want) {
		t.Fatalf("cert request: %d %s%s\nserver log:\n%s", code, out.String(), errb.String(), logs.String())
	}
	chainPEM, _ := os.ReadFile(filepath.Join(svid, "cert-chain.pem"))
	chain, err := ca.ParseCerts(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ca.ParseCerts(vaultRoot)
	if len(chain) != 2 || chain[1].CheckSignatureFrom(roots[0]) != nil {
		t.Fatalf("cert-chain.pem holds %d certificates; want the leaf and the intermediate Vault signed", len(chain))
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("cluster.local"), roots)
	if _, _, err := x509svid.Verify(chain, bundle); err != nil {
		t.Fatal(err)
	}
	catest.OpenSSLVerify(t, [][]byte{ca.EncodeCerts(chain[0]), ca.EncodeCerts(chain[1]), vaultRoot})
	// The trust bundle published to namespaces is Vault's root.
	kubetest.Eventually(t, 30*time.Second, func() error {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(app1).Get(context.Background(), rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data[rootcert.Key] != string(vaultRoot) {
			return os.ErrInvalid
		}
		return nil
	})
	// With Vault, no CA key is stored in the cluster.
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("istio-ca-secret: %v, want NotFound", err)
	}

	// A root rotated in Vault: published beside the signing one (the
	// default 10-minute grace keeps it from signing in this test).
	rotate := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := app.Run(context.Background(), append([]string{"ca", "rotate", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns}, args...), &out, &out)
		return code, out.String()
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		if code, out := rotate("--status"); code != 0 || !strings.Contains(out, "phase: none") || !strings.Contains(out, "the root rotates in Vault at "+v.Addr) {
			return fmt.Errorf("status before the rotation: exit %d\n%s", code, out)
		}
		return nil
	})
	v.RunDoc(t, dir, nil, "setup", "rotate", "replace")
	next, err := os.ReadFile(filepath.Join(dir, "vault-root-next.pem"))
	if err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		cm, err := apiserver.Client.CoreV1().ConfigMaps(app1).Get(context.Background(), rootcert.ConfigMap, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data[rootcert.Key] != string(vaultRoot)+string(next) {
			return fmt.Errorf("%s/%s holds %q, want Vault's old root then the new one", app1, rootcert.ConfigMap, cm.Data[rootcert.Key])
		}
		return nil
	})
	kubetest.Eventually(t, 30*time.Second, func() error {
		if code, out := rotate("--status"); code != 0 || !strings.Contains(out, "phase: published (target activated)") || !strings.Contains(out, "waiting: activation waits until ") {
			return fmt.Errorf("status once published: exit %d\n%s", code, out)
		}
		return nil
	})
	start := time.Now()
	if code, out := rotate("activate"); code != 1 || !strings.Contains(out, "in Vault mode the root rotates in Vault") || time.Since(start) > 10*time.Second {
		t.Errorf("ca rotate --kubernetes activate in Vault mode: exit %d after %s\n%s", code, time.Since(start), out)
	}
	if strings.Contains(logs.String(), "Publish a new root before signing with it") {
		t.Errorf("the log has the unpublished-root ERROR:\n%s", logs.String())
	}
}

func freeLocalAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
