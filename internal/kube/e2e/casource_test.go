package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/app"
)

// serving is the serving certificate a replica presents, signed by the
// CA it signs with.
func serving(addr string) (*x509.Certificate, error) {
	// Only reading who signed it, with ALPN h2 as a gRPC client (grpc-go's
	// server closes a TLS connection without it right after the handshake).
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// signsWith is a condition for eventually: a failed handshake (a replica
// still starting) is tried again, as is a certificate from another CA.
func signsWith(addr string, want *x509.Certificate) func() error {
	return func() error {
		got, err := serving(addr)
		if err != nil {
			return err
		}
		if got.CheckSignatureFrom(want) != nil {
			return fmt.Errorf("%s signs with %q, want %q", addr, got.Issuer, want.Subject)
		}
		return nil
	}
}

// TestCacertsDeletionKeepsReplicasAgreeing: two replicas sign with the
// plugged-in CA of Secret cacerts. Deleting the Secret changes nothing in
// them, and a replica started afterwards refuses to start (before, it
// took istio-ca-secret: two roots signing at once). Restoring the Secret
// lets it start, with the same CA. Deleting the record
// (warden-ca-source) as well switches every replica to one self-signed CA.
func TestCacertsDeletionKeepsReplicasAgreeing(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	root := catest.Root(t, ca.CAOptions{CommonName: "plugged root"})
	inter, _ := ca.NewIntermediate(root, ca.CAOptions{CommonName: "plugged intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, inter), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addrA, logsA := startServeAs(t, ns, "replica-a")
	addrB, _ := startServeAs(t, ns, "replica-b")
	for _, addr := range []string{addrA, addrB} {
		kubetest.Eventually(t, 10*time.Second, signsWith(addr, inter.Cert))
	}
	rec, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, casecret.SourceConfigMap, metav1.GetOptions{})
	if err != nil || rec.Data["source"] != "cacerts" {
		t.Fatalf("no record of the plugged-in CA: %v %v", err, rec)
	}

	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, casecret.PluggedName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logsA.String(), "cacerts deleted: this replica keeps signing") {
			return fmt.Errorf("no report of the deletion")
		}
		return nil
	})
	for _, addr := range []string{addrA, addrB} {
		if err := signsWith(addr, inter.Cert)(); err != nil {
			t.Fatal(err)
		}
	}
	var logsC testkit.Buffer
	// (A replica that starts serves until the timeout: that is the failure.)
	runCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	code := app.Run(runCtx, []string{"serve", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", ns,
		"--listen", "127.0.0.1:0", "--http-listen", "", "--replica-id", "replica-c"}, &logsC, &logsC)
	if code == 0 || !strings.Contains(logsC.String(), "secret "+ns+"/cacerts is gone, but this install signs with it") {
		t.Fatalf("a replica started without cacerts: exit %d\n%s", code, logsC.String())
	}
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("the refused replica created istio-ca-secret")
	}

	// Restored: a new replica starts with the same CA.
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, inter), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addrC, _ := startServeAs(t, ns, "replica-c")
	kubetest.Eventually(t, 10*time.Second, signsWith(addrC, inter.Cert))

	// Confirmed: cacerts and the record deleted, every replica moves to
	// the one self-signed CA in istio-ca-secret.
	if err := apiserver.Client.CoreV1().Secrets(ns).Delete(ctx, casecret.PluggedName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // let the deletion reach the replicas first
	if err := apiserver.Client.CoreV1().ConfigMaps(ns).Delete(ctx, casecret.SourceConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var self *x509.Certificate
	kubetest.Eventually(t, 20*time.Second, func() error {
		sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		certs, err := ca.ParseCerts(sec.Data["ca-cert.pem"])
		if err != nil {
			return err
		}
		self = certs[0]
		return nil
	})
	for _, addr := range []string{addrA, addrB, addrC} {
		kubetest.Eventually(t, 20*time.Second, signsWith(addr, self))
	}
}

// TestKillDuringCacertsReload: a replica is killed (SIGKILL) at random
// moments while it takes up a new cacerts, then started again. A replica
// keeps no CA state of its own (cacerts and the record live in the API
// server), so whatever the moment, the restarted replica signs with what
// cacerts holds, the record names that root, and no istio-ca-secret
// appears.
func TestKillDuringCacertsReload(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "warden")
	var mats []*ca.Material
	for _, n := range []string{"A", "B"} {
		root := catest.Root(t, ca.CAOptions{CommonName: "root " + n})
		inter, _ := ca.NewIntermediate(root, ca.CAOptions{CommonName: "intermediate " + n, TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
		mats = append(mats, inter)
	}
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Create(ctx, kubetest.CacertsSecret(ns, mats[0]), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := func() (string, *exec.Cmd) {
		t.Helper()
		addr := testkit.FreeAddr(t)
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{"serve", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig,
			"--namespace", ns, "--listen", addr, "--http-listen", "", "--replica-id", "crash"}, "\x1f"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// A replica left running by a failed run would keep writing the
		// cluster's bundles as its install, and fail the tests after it.
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		kubetest.Eventually(t, 30*time.Second, func() error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		})
		return addr, cmd
	}
	runs := 15
	for i := range runs {
		_, cmd := start()
		next := mats[(i+1)%2]
		sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.PluggedName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sec.Data = kubetest.CacertsSecret(ns, next).Data
		if _, err := apiserver.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()

		addr, cmd := start()
		kubetest.Eventually(t, 10*time.Second, signsWith(addr, next.Cert))
		fp := sha256.Sum256(next.Roots[0].Raw)
		kubetest.Eventually(t, 10*time.Second, func() error {
			rec, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, casecret.SourceConfigMap, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if rec.Data["rootSHA256"] != hex.EncodeToString(fp[:]) {
				return fmt.Errorf("run %d: the record names root %s", i, rec.Data["rootSHA256"])
			}
			return nil
		})
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	if _, err := apiserver.Client.CoreV1().Secrets(ns).Get(ctx, casecret.Name, metav1.GetOptions{}); err == nil {
		t.Fatal("istio-ca-secret was created")
	}
}
