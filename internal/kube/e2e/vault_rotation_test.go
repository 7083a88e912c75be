package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// vaultInstall is an install in Vault mode on the test API server: a
// real Vault set up by docs/vault.md's steps (Kubernetes auth, checked
// by TokenReviews against this API server), a workload namespace with
// service account cart, and the flags its replicas run with.
type vaultInstall struct {
	v              *vaulttest.Server
	dir, ns, shop  string
	oldRoot        *x509.Certificate
	serveFlags     []string
	roots, cartTok string // files: the roots a client trusts, cart's token
}

// newVaultInstall: intermediates of 90 s (renewed at half-life, forced
// through a closed gate 18 s before their end), Vault's issuers read
// every second, no rotation grace.
func newVaultInstall(t *testing.T) *vaultInstall {
	t.Helper()
	vi := &vaultInstall{v: vaulttest.Start(t), dir: t.TempDir(), ns: apiserver.Namespace(t, "warden"), shop: apiserver.Namespace(t, "shop")}
	apiserver.ServiceAccount(t, vi.ns, "warden")
	apiserver.ServiceAccount(t, vi.shop, "cart")
	kubeCA := filepath.Join(vi.dir, "kube-ca.pem")
	if err := os.WriteFile(kubeCA, apiserver.Config.CAData, 0o600); err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("PATH")
	if _, err := os.Stat(filepath.Join(apiserver.Assets, "kubectl")); err == nil {
		path = apiserver.Assets + string(os.PathListSeparator) + path
	}
	vi.v.RunDoc(t, vi.dir, []string{"KUBE_HOST=" + apiserver.Config.Host, "KUBE_CA_CERT=" + kubeCA, "WARDEN_NAMESPACE=" + vi.ns,
		"KUBECONFIG=" + apiserver.Kubeconfig, "PATH=" + path}, "setup", "pki", "policy", "kubernetes")
	vi.oldRoot = readRootsFile(t, filepath.Join(vi.dir, "vault-root.pem"))[0]
	jwt := filepath.Join(vi.dir, "warden.jwt")
	vi.cartTok = filepath.Join(vi.dir, "cart.jwt")
	os.WriteFile(jwt, []byte(apiserver.Token(t, vi.ns, "warden")), 0o600)
	os.WriteFile(vi.cartTok, []byte(apiserver.Token(t, vi.shop, "cart", "istio-ca")), 0o600)
	vi.roots = filepath.Join(vi.dir, "client-roots.pem")
	os.WriteFile(vi.roots, ca.EncodeCerts(vi.oldRoot), 0o600)
	vi.serveFlags = []string{"--ca-upstream", "vault", "--vault-addr", vi.v.Addr, "--vault-cacert", vi.v.CACert,
		"--vault-auth", "kubernetes", "--vault-k8s-role", "warden", "--vault-k8s-token-file", jwt,
		"--vault-issuer-poll", "1s", "--rotation-grace", "0s",
		"--vault-intermediate-ttl", "90s", "--vault-min-intermediate-ttl", "30s"}
	return vi
}

func readRootsFile(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ca.ParseCerts(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return roots
}

// start runs a replica of the install.
func (vi *vaultInstall) start(t *testing.T, name string) replica {
	t.Helper()
	var r replica
	r.addr, r.logs, r.stop = startServeWith(t, vi.ns, name, vi.serveFlags...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s:\n%s", name, r.logs.String())
		}
	})
	return r
}

// rotateInVault runs docs/vault.md's two steps at once (a new root, made
// the default issuer) and returns the new root; clients trust both.
func (vi *vaultInstall) rotateInVault(t *testing.T) *x509.Certificate {
	t.Helper()
	vi.v.RunDoc(t, vi.dir, nil, "setup", "rotate", "replace")
	next := readRootsFile(t, filepath.Join(vi.dir, "vault-root-next.pem"))[0]
	os.WriteFile(vi.roots, ca.EncodeCerts(vi.oldRoot, next), 0o600)
	return next
}

// leafRoot has replica r sign a certificate for cart and returns the
// root its intermediate chains to (old or next), failing on another.
func (vi *vaultInstall) leafRoot(t *testing.T, r replica, roots ...*x509.Certificate) *x509.Certificate {
	t.Helper()
	out := filepath.Join(t.TempDir(), "svid")
	var o, e bytes.Buffer
	if code := app.Run(context.Background(), []string{"cert", "request", "--ca", r.addr, "--root-cert", vi.roots, "--token-file", vi.cartTok, "--out", out}, &o, &e); code != 0 {
		t.Fatalf("cert request from %s: %d %s%s", r.addr, code, o.String(), e.String())
	}
	b, _ := os.ReadFile(filepath.Join(out, "cert-chain.pem"))
	chain, err := ca.ParseCerts(b)
	if err != nil || len(chain) < 2 {
		t.Fatalf("cert-chain.pem from %s: %d certificates, %v", r.addr, len(chain), err)
	}
	for _, root := range roots {
		if chain[len(chain)-1].CheckSignatureFrom(root) == nil {
			return root
		}
	}
	t.Fatalf("the leaf from %s chains to none of the roots", r.addr)
	return nil
}

// streamBundle opens a ROOTCA stream to r and returns the bundle r sends
// first.
func (vi *vaultInstall) streamBundle(t *testing.T, r replica) []*x509.Certificate {
	t.Helper()
	b, _ := os.ReadFile(vi.roots)
	s := testkit.OpenBundleStream(t, r.addr, b, apiserver.Token(t, vi.shop, "cart", "istio-ca"))
	defer s.Close()
	return s.First
}

// status runs 'warden ca rotate --kubernetes --status' against the
// install; an error until the leader has reported.
func (vi *vaultInstall) status() (string, error) {
	var out bytes.Buffer
	code := app.Run(context.Background(), []string{"ca", "rotate", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--namespace", vi.ns, "--status"}, &out, &out)
	if code != 0 {
		return "", fmt.Errorf("ca rotate --status: exit %d: %s", code, out.String())
	}
	return out.String(), nil
}

// waitStatus waits until the status satisfies ok, and returns it.
func (vi *vaultInstall) waitStatus(t *testing.T, what string, d time.Duration, ok func(string) bool) string {
	t.Helper()
	var status string
	kubetest.Eventually(t, d, func() error {
		var err error
		if status, err = vi.status(); err != nil {
			return err
		}
		if !ok(status) {
			return fmt.Errorf("%s:\n%s", what, status)
		}
		return nil
	})
	return status
}

func subjects(roots []*x509.Certificate) string {
	var names []string
	for _, r := range roots {
		names = append(names, r.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// waitConfigMap waits until the shop namespace's istio-ca-root-cert holds
// want, in order.
func (vi *vaultInstall) waitConfigMap(t *testing.T, what string, d time.Duration, want ...*x509.Certificate) {
	t.Helper()
	kubetest.Eventually(t, d, func() error {
		if got := bundleRoots(t, vi.shop); !ca.SameRoots(got, want) {
			return fmt.Errorf("%s: the ConfigMap holds %s, want %s", what, subjects(got), subjects(want))
		}
		return nil
	})
}

// TestVaultKubeRotationWaitsForEveryReplica (issue #28, defect 4, on
// Kubernetes): two replicas in Vault mode; an agent's ROOTCA stream on
// replica b does not take the new bundle. A root rotated in Vault (both
// steps at once, so Vault signs only under the new root) is published,
// but neither replica signs under it while b's stream lacks it: the
// leader decides activation for every replica, from every replica's
// report, and 'ca rotate --kubernetes --status' names b's stream. Once
// the stream takes the new root, both replicas sign under it.
func TestVaultKubeRotationWaitsForEveryReplica(t *testing.T) {
	vi := newVaultInstall(t)
	a := vi.start(t, "replica-a")
	vi.waitConfigMap(t, "before", 30*time.Second, vi.oldRoot)
	b := vi.start(t, "replica-b")
	rootPEM := ca.EncodeCerts(vi.oldRoot)
	stream := testkit.OpenBundleStream(t, b.addr, rootPEM, apiserver.Token(t, vi.shop, "cart", "istio-ca"))

	newRoot := vi.rotateInVault(t)
	vi.waitConfigMap(t, "published", 30*time.Second, vi.oldRoot, newRoot)
	// Past the replicas' report window and a renewer's least interval:
	// the leader's own consumers all hold the new root and Vault signs
	// only under it, but b's stream lacks it.
	time.Sleep(8 * time.Second)
	for name, r := range map[string]replica{"a": a, "b": b} {
		if got := vi.leafRoot(t, r, vi.oldRoot, newRoot); !got.Equal(vi.oldRoot) {
			t.Fatalf("replica %s signs under the new root while a stream on replica b lacks it", name)
		}
	}
	status := vi.waitStatus(t, "the stream on replica b is not named", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "missing: replica replica-b: spiffe://cluster.local/ns/"+vi.shop+"/sa/cart (sds stream")
	})
	if !strings.Contains(status, "phase: published (target activated)") || !strings.Contains(status, "the root rotates in Vault at "+vi.v.Addr) {
		t.Fatalf("status while b's stream lacks the new root:\n%s", status)
	}

	// The stream takes the new root: the leader activates, both follow.
	if got := stream.Take(t); !ca.SameRoots(got, []*x509.Certificate{vi.oldRoot, newRoot}) {
		t.Fatalf("the stream got %s, want the old root then the new", subjects(got))
	}
	vi.waitStatus(t, "not activated", 30*time.Second, func(s string) bool { return strings.Contains(s, "phase: activated") })
	kubetest.Eventually(t, 30*time.Second, func() error {
		for name, r := range map[string]replica{"a": a, "b": b} {
			if got := vi.leafRoot(t, r, vi.oldRoot, newRoot); !got.Equal(newRoot) {
				return fmt.Errorf("replica %s still signs under the old root", name)
			}
		}
		return nil
	})
	vi.waitConfigMap(t, "activated", 20*time.Second, newRoot, vi.oldRoot)
	for _, r := range []replica{a, b} {
		if l := r.logs.String(); strings.Contains(l, "ACTIVATING") {
			t.Errorf("a forced activation:\n%s", l)
		}
	}
}

var retireAfter = regexp.MustCompile(`(?m)^retire after: +(\S+)`)

// TestVaultKubeRotationKeptAcrossRestarts (issue #28, defect 4, on
// Kubernetes): the rotation's state is kept in the API server, so a
// replica restarted after activation, and a leader that takes over,
// still trust the old root until the last intermediate under it has
// expired; then it is retired everywhere.
func TestVaultKubeRotationKeptAcrossRestarts(t *testing.T) {
	vi := newVaultInstall(t)
	a := vi.start(t, "replica-a")
	vi.waitConfigMap(t, "before", 30*time.Second, vi.oldRoot)
	b := vi.start(t, "replica-b")
	newRoot := vi.rotateInVault(t)
	status := vi.waitStatus(t, "not activated", 40*time.Second, func(s string) bool { return strings.Contains(s, "phase: activated") })
	m := retireAfter.FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("no retirement time once activated:\n%s", status)
	}
	retire, err := time.Parse(time.RFC3339, m[1])
	if err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 30*time.Second, func() error {
		if got := vi.leafRoot(t, b, vi.oldRoot, newRoot); !got.Equal(newRoot) {
			return fmt.Errorf("replica b still signs under the old root")
		}
		return nil
	})

	// Replica b restarts: it trusts both roots, the new one first.
	b.stop()
	b = vi.start(t, "replica-b")
	if got := vi.streamBundle(t, b); !ca.SameRoots(got, []*x509.Certificate{newRoot, vi.oldRoot}) {
		t.Fatalf("replica b restarted after activation sends %s, want the new root then the old", subjects(got))
	}
	// The leader goes: b leads, and keeps the old root in the cluster's
	// copies.
	a.stop()
	kubetest.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(b.logs.String(), "elected leader") {
			return fmt.Errorf("replica b does not lead")
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	vi.waitConfigMap(t, "after the leader changed", time.Second, newRoot, vi.oldRoot)
	if time.Now().After(retire) {
		t.Fatalf("the test ran past the retirement (%s) before checking the restarts", retire)
	}

	// Retired once the last intermediate under the old root has expired.
	vi.waitConfigMap(t, "retired", time.Until(retire)+30*time.Second, newRoot)
	if got := vi.streamBundle(t, b); !ca.SameRoots(got, []*x509.Certificate{newRoot}) {
		t.Fatalf("after retirement replica b sends %s, want the new root alone", subjects(got))
	}
	// The leader's report follows its next step: wait for it.
	vi.waitStatus(t, "the status once retired", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "phase: none") && strings.Contains(s, "signing root: sha256 "+ca.Fingerprint(newRoot))
	})
}
