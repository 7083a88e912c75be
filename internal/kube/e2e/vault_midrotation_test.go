package e2e

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestVaultKubeReplicaStartedMidRotation: Vault switched its default
// issuer to a new root and the leader holds activation back (a stream
// on replica b lacks the new root) when replica c starts. c has no
// intermediate under the old root and Vault's default issuer signs only
// under the new one: c asks the old issuer by name, so its workload
// certificates chain to the old root, like the other replicas', with
// no ERROR; once the leader activates, c moves to the new root.
func TestVaultKubeReplicaStartedMidRotation(t *testing.T) {
	vi := newVaultInstall(t)
	a := vi.start(t, "replica-a")
	vi.waitConfigMap(t, "before", 30*time.Second, vi.oldRoot)
	b := vi.start(t, "replica-b")
	stream := testkit.OpenBundleStream(t, b.addr, ca.EncodeCerts(vi.oldRoot), apiserver.Token(t, vi.shop, "cart", "istio-ca"))

	newRoot := vi.rotateInVault(t)
	vi.waitConfigMap(t, "published", 30*time.Second, vi.oldRoot, newRoot)
	vi.waitStatus(t, "the stream on replica b is not named", 20*time.Second, func(s string) bool {
		return strings.Contains(s, "phase: published") && strings.Contains(s, "missing: replica replica-b:")
	})

	c := vi.start(t, "replica-c")
	if got := vi.leafRoot(t, c, vi.oldRoot, newRoot); !got.Equal(vi.oldRoot) {
		t.Fatal("replica c, started mid-rotation, signs under the new root the leader has not activated")
	}
	if got := vi.streamBundle(t, c); !ca.SameRoots(got, []*x509.Certificate{vi.oldRoot, newRoot}) {
		t.Fatalf("replica c sends %s, want the old root then the new", subjects(got))
	}
	for _, bad := range []string{"ACTIVATING", "level=ERROR"} {
		if strings.Contains(c.logs.String(), bad) {
			t.Fatalf("replica c logged %q", bad)
		}
	}

	// The stream takes the new root: the leader activates, c follows.
	stream.Take(t)
	vi.waitStatus(t, "not activated", 30*time.Second, func(s string) bool { return strings.Contains(s, "phase: activated") })
	kubetest.Eventually(t, 30*time.Second, func() error {
		for name, r := range map[string]replica{"a": a, "b": b, "c": c} {
			if got := vi.leafRoot(t, r, vi.oldRoot, newRoot); !got.Equal(newRoot) {
				return fmt.Errorf("replica %s still signs under the old root", name)
			}
		}
		return nil
	})
	for name, r := range map[string]replica{"a": a, "b": b, "c": c} {
		if l := r.logs.String(); strings.Contains(l, "ACTIVATING") {
			t.Errorf("a forced activation on replica %s", name)
		}
	}
}
