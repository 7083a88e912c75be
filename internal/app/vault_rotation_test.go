package app_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// vaultRotationFixture is a warden serve in Vault mode (a real Vault set
// up by docs/vault.md, AppRole), with a workload's ROOTCA stream that
// takes a new bundle only when the test says so.
type vaultRotationFixture struct {
	v               *vaulttest.Server
	dir, data, addr string
	logs            *syncBuffer
	stop            func() int
	oldRoot         *x509.Certificate
	stream          *testkit.BundleStream
}

// restart stops serve (which must exit 0) and starts it again on the
// same data directory with flags; it returns the new serve's log.
func (f *vaultRotationFixture) restart(t *testing.T, flags ...string) *syncBuffer {
	t.Helper()
	if code := f.stop(); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	_, logs := serveLogged(t, f.data, f.addr, append(approleFlags(f.v, f.dir), flags...)...)
	return logs
}

func newVaultRotationFixture(t *testing.T, flags ...string) *vaultRotationFixture {
	t.Helper()
	v, dir := vaultSetup(t, "approle")
	f := &vaultRotationFixture{v: v, dir: dir, data: filepath.Join(t.TempDir(), "data"), addr: testkit.FreeAddr(t)}
	f.oldRoot = readRoots(t, filepath.Join(dir, "vault-root.pem"))[0]
	f.stop, f.logs = serveLogged(t, f.data, f.addr, append(approleFlags(v, dir), flags...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("warden serve:\n%s", f.logs.String())
		}
	})
	code, tok, stderr := run(t, "token", "--data-dir", f.data, "--ns", "shop", "--sa", "cart")
	if code != 0 {
		t.Fatal(stderr)
	}
	f.stream = testkit.OpenBundleStream(t, f.addr, ca.EncodeCerts(f.oldRoot), strings.TrimSpace(tok))
	return f
}

func readRoots(t *testing.T, path string) []*x509.Certificate {
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

// rotateInVault runs docs/vault.md's two steps at once (the new root,
// then made the default issuer), as an operator who does not wait for
// warden between them, and returns the new root.
func (f *vaultRotationFixture) rotateInVault(t *testing.T) *x509.Certificate {
	t.Helper()
	f.v.RunDoc(t, f.dir, nil, "setup", "rotate", "replace")
	return readRoots(t, filepath.Join(f.dir, "vault-root-next.pem"))[0]
}

// bundleFile waits until <data-dir>/root-cert.pem holds want, in order.
func (f *vaultRotationFixture) bundleFile(t *testing.T, what string, d time.Duration, want ...*x509.Certificate) time.Time {
	t.Helper()
	path := filepath.Join(f.data, "root-cert.pem")
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		got := readRoots(t, path)
		if ca.SameRoots(got, want) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s holds %d roots (first %s), want %d", what, path, len(got), got[0].Subject, len(want))
		}
	}
}

// leaf has the CA sign a workload certificate, trusting the data
// directory's bundle, and returns its chain (leaf, intermediate, root).
func (f *vaultRotationFixture) leaf(t *testing.T) []*x509.Certificate {
	t.Helper()
	return certRequest(t, f.addr, f.data, filepath.Join(f.data, "root-cert.pem"), filepath.Join(t.TempDir(), "svid"))
}

func (f *vaultRotationFixture) status(t *testing.T) string {
	t.Helper()
	return rotate(t, f.data, "--status")
}

// info runs 'ca info' on the data directory and checks it says each of
// want.
func (f *vaultRotationFixture) info(t *testing.T, want ...string) {
	t.Helper()
	code, stdout, stderr := run(t, "ca", "info", "--data-dir", f.data)
	if code != 0 {
		t.Fatalf("ca info: exit %d: %s", code, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stdout, w) {
			t.Errorf("ca info lacks %q:\n%s", w, stdout)
		}
	}
}

var retireLine = regexp.MustCompile(`(?m)^retire after: +(\S+)`)

// TestServeVaultRootRotation (issue #28, defect 4): a root rotated in a
// real Vault (docs/vault.md's two steps, one right after the other)
// under a running warden serve is published to every consumer within
// seconds, long before the intermediate's renewal, while the current
// intermediate keeps signing; warden signs under the new root only once
// a ROOTCA stream that was slow to take it has it, then trusts the old
// root until the last intermediate under it expires, also across a
// restart. 'ca rotate --status' reports each phase, and the steps asked
// by hand are refused with the Vault commands that rotate it.
func TestServeVaultRootRotation(t *testing.T) {
	flags := []string{"--vault-intermediate-ttl", "20m", "--vault-min-intermediate-ttl", "1m", "--vault-issuer-poll", "1s", "--rotation-grace", "2s"}
	f := newVaultRotationFixture(t, flags...)
	out := f.status(t)
	if phaseLine.FindStringSubmatch(out)[1] != "none" || !strings.Contains(out, "the root rotates in Vault at "+f.v.Addr+" (PKI mount pki)") {
		t.Fatalf("status before the rotation:\n%s", out)
	}
	before := f.leaf(t)
	if !before[2].Equal(f.oldRoot) {
		t.Fatal("the first leaf does not chain to Vault's root")
	}
	oldInter := before[1]

	// Published within seconds; the intermediate (20 minutes, renewed
	// at half-life) is not renewed meanwhile.
	rotated := time.Now()
	newRoot := f.rotateInVault(t)
	published := f.bundleFile(t, "publish", 15*time.Second, f.oldRoot, newRoot)
	t.Logf("published %s after the rotation in Vault", published.Sub(rotated).Round(time.Millisecond))
	out = waitStatus(t, f.data, 10*time.Second, "the stream missing the new root", func(s string) bool {
		return strings.Contains(s, "activation waits for 1 of 1 consumers to hold the new root: spiffe://cluster.local/ns/shop/sa/cart (sds stream")
	})
	if phaseLine.FindStringSubmatch(out)[1] != "published" || newRootLine(out) != ca.Fingerprint(newRoot) ||
		!strings.Contains(out, "signing root: sha256 "+ca.Fingerprint(f.oldRoot)) || !strings.Contains(out, "sds: 0 of 1 hold the new root") {
		t.Fatalf("status once published:\n%s", out)
	}
	// Past the grace, the stream still lacks the new root: the old
	// intermediate signs on.
	time.Sleep(3 * time.Second)
	during := f.leaf(t)
	if !during[1].Equal(oldInter) || !during[2].Equal(f.oldRoot) {
		t.Fatalf("while a consumer lacks the new root, a leaf chains to %s through intermediate %x, want the old root's %x",
			during[2].Subject, during[1].SerialNumber, oldInter.SerialNumber)
	}
	if out := f.status(t); phaseLine.FindStringSubmatch(out)[1] != "published" {
		t.Fatalf("activated although a consumer lacks the new root:\n%s", out)
	}
	f.info(t, "Root rotation in progress in Vault", "Root 1 (old root, signs until activation):\n  Subject:     CN=Example Mesh Root CA\n",
		"Root 2 (new root, trusted; signs from activation):\n  Subject:     CN=Example Mesh Root CA 2\n")

	// The stream takes the new root: warden activates.
	if got := f.stream.Take(t); !ca.SameRoots(got, []*x509.Certificate{f.oldRoot, newRoot}) {
		t.Fatalf("the stream got %d roots, want the old then the new", len(got))
	}
	out = waitStatus(t, f.data, 30*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	f.bundleFile(t, "activate", 5*time.Second, newRoot, f.oldRoot)
	after := f.leaf(t)
	if !after[2].Equal(newRoot) || after[1].CheckSignatureFrom(newRoot) != nil {
		t.Fatalf("after activation a leaf chains to %s, want the new root", after[2].Subject)
	}
	verifyChain(t, "leaf under the new root", after[:3], filepath.Join(f.dir, "vault-root-next.pem"))
	if m := retireLine.FindStringSubmatch(out); m == nil || m[1] != oldInter.NotAfter.UTC().Format(time.RFC3339) {
		t.Fatalf("retirement should wait for the old intermediate's end, %s:\n%s", oldInter.NotAfter.UTC().Format(time.RFC3339), out)
	}
	if !strings.Contains(out, "signing root: sha256 "+ca.Fingerprint(newRoot)+", expires") || !strings.Contains(out, "old root:     sha256 "+ca.Fingerprint(f.oldRoot)) {
		t.Fatalf("status once activated:\n%s", out)
	}

	f.info(t, "Root 1 (new root, signs):\n  Subject:     CN=Example Mesh Root CA 2\n",
		"Root 2 (old root, trusted until "+oldInter.NotAfter.UTC().Format(time.RFC3339)+", when the last intermediate under it has expired):\n  Subject:     CN=Example Mesh Root CA\n")

	// Steps are Vault's to take.
	code, stdout, stderr := run(t, "ca", "rotate", "--data-dir", f.data, "publish")
	if code != 1 || !strings.Contains(stderr, "in Vault mode the root rotates in Vault: create the new root there (vault write pki/root/rotate/internal") {
		t.Fatalf("ca rotate publish in Vault mode: exit %d\n%s%s", code, stdout, stderr)
	}

	// A restart keeps trusting the old root until it retires.
	logs := f.restart(t, flags...)
	f.bundleFile(t, "after a restart", 5*time.Second, newRoot, f.oldRoot)
	if out := f.status(t); phaseLine.FindStringSubmatch(out)[1] != "activated" || retireLine.FindStringSubmatch(out)[1] != oldInter.NotAfter.UTC().Format(time.RFC3339) {
		t.Fatalf("status after a restart:\n%s", out)
	}
	for _, l := range []string{f.logs.String(), logs.String()} {
		for _, bad := range []string{"Publish a new root before signing with it", "ACTIVATING", "level=ERROR"} {
			if strings.Contains(l, bad) {
				t.Errorf("the log has %q:\n%s", bad, l)
			}
		}
	}
}

func newRootLine(status string) string {
	if m := newRoot.FindStringSubmatch(status); m != nil {
		return m[1]
	}
	return ""
}

// TestServeVaultRootRotationAtRenewal: when the renewal, not the watch of
// Vault's issuers, is the first to meet the new root (Vault signs under
// it already), the intermediate under it is held back and the root
// published; the old intermediate signs on until the slow stream has the
// new root, and the old root is retired once the last intermediate
// under it has expired, against a real Vault renewing every few seconds.
func TestServeVaultRootRotationAtRenewal(t *testing.T) {
	f := newVaultRotationFixture(t, "--vault-intermediate-ttl", "40s", "--vault-min-intermediate-ttl", "20s",
		"--vault-issuer-poll", "1h", "--rotation-grace", "0s")
	newRoot := f.rotateInVault(t)
	f.bundleFile(t, "publish at the renewal", 20*time.Second, f.oldRoot, newRoot)
	waitFor(t, f.logs, "the upstream signs under a root warden had not published", 1)
	time.Sleep(2 * time.Second)
	if during := f.leaf(t); !during[2].Equal(f.oldRoot) {
		t.Fatalf("while a consumer lacks the new root, a leaf chains to %s", during[2].Subject)
	}
	if out := f.status(t); phaseLine.FindStringSubmatch(out)[1] != "published" || !strings.Contains(out, "missing: spiffe://cluster.local/ns/shop/sa/cart") {
		t.Fatalf("status while the stream lacks the new root:\n%s", out)
	}
	f.stream.Take(t)
	waitStatus(t, f.data, 20*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	if after := f.leaf(t); !after[2].Equal(newRoot) {
		t.Fatalf("after activation a leaf chains to %s, want the new root", after[2].Subject)
	}
	// The last intermediate under the old root lives 40 s at most.
	f.bundleFile(t, "retire", 60*time.Second, newRoot)
	if out := f.status(t); phaseLine.FindStringSubmatch(out)[1] != "none" || !strings.Contains(out, "signing root: sha256 "+ca.Fingerprint(newRoot)) {
		t.Fatalf("status once retired:\n%s", out)
	}
	waitFor(t, f.logs, "upstream root rotation: retired the old root", 1)
	for _, bad := range []string{"Publish a new root before signing with it", "ACTIVATING"} {
		if strings.Contains(f.logs.String(), bad) {
			t.Errorf("the log has %q", bad)
		}
	}
}
