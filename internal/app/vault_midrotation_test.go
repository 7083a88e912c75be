package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// TestServeVaultRestartMidRotation: warden serve restarts after Vault
// switched its default issuer to a new root but before warden activated
// it (the grace since publishing has not passed). The restarted warden
// has no intermediate: it asks Vault's old issuer for one by name
// (pki/issuer/<id>/sign-intermediate, in the docs' policy), so its
// workload certificates still chain to the old root, with no ERROR;
// once the grace has passed it activates the new root as usual.
func TestServeVaultRestartMidRotation(t *testing.T) {
	flags := []string{"--vault-intermediate-ttl", "20m", "--vault-min-intermediate-ttl", "1m", "--vault-issuer-poll", "1s", "--rotation-grace", "25s"}
	f := newVaultRotationFixture(t, flags...)
	newRoot := f.rotateInVault(t)
	f.bundleFile(t, "publish", 15*time.Second, f.oldRoot, newRoot)
	logs := f.restart(t, flags...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("warden serve after the restart:\n%s", logs.String())
		}
	})
	if leaf := f.leaf(t); !leaf[2].Equal(f.oldRoot) || leaf[1].CheckSignatureFrom(f.oldRoot) != nil {
		t.Fatalf("restarted mid-rotation, a leaf chains to %s, want the old root (not activated yet)", leaf[2].Subject)
	}
	if out := f.status(t); phaseLine.FindStringSubmatch(out)[1] != "published" || !strings.Contains(out, "signing root: sha256 "+ca.Fingerprint(f.oldRoot)) {
		t.Fatalf("status after the restart:\n%s", out)
	}
	for _, bad := range []string{"ACTIVATING", "level=ERROR"} {
		if strings.Contains(logs.String(), bad) {
			t.Fatalf("the restarted warden logged %q", bad)
		}
	}

	// Past the grace (no consumer lacks the new root): activated.
	waitStatus(t, f.data, 40*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	if after := f.leaf(t); !after[2].Equal(newRoot) {
		t.Fatalf("after activation a leaf chains to %s, want the new root", after[2].Subject)
	}
	if strings.Contains(logs.String(), "ACTIVATING") {
		t.Fatal("activation after the restart was forced")
	}
}

// TestServeVaultRestartMidRotationWithoutIssuerPolicy: the same restart
// with warden's policy lacking pki/issuer/+/sign-intermediate (written
// before this release's docs/vault.md): Vault refuses the old issuer,
// warden falls back to the default issuer's intermediate under the new
// root, and its ERROR says why, naming the policy path to grant.
func TestServeVaultRestartMidRotationWithoutIssuerPolicy(t *testing.T) {
	flags := []string{"--vault-intermediate-ttl", "20m", "--vault-min-intermediate-ttl", "1m", "--vault-issuer-poll", "1s", "--rotation-grace", "1h"}
	f := newVaultRotationFixture(t, flags...)
	f.v.API(t, "PUT", "/v1/sys/policies/acl/warden", map[string]any{"policy": `path "pki/root/sign-intermediate" { capabilities = ["update"] }`})
	newRoot := f.rotateInVault(t)
	f.bundleFile(t, "publish", 15*time.Second, f.oldRoot, newRoot)
	logs := f.restart(t, flags...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("warden serve after the restart:\n%s", logs.String())
		}
	})
	if leaf := f.leaf(t); !leaf[2].Equal(newRoot) {
		t.Fatalf("without the old issuer, a leaf chains to %s, want the new root (the fallback)", leaf[2].Subject)
	}
	var errLine string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "ACTIVATING THE NEW ROOT ALTHOUGH NOT EVERY CONSUMER HOLDS IT") {
			errLine = l
		}
	}
	if errLine == "" || !strings.Contains(errLine, `403 permission denied`) ||
		!strings.Contains(errLine, `grant update on path \"pki/issuer/+/sign-intermediate\" in warden's policy (docs/vault.md, Policy)`) {
		t.Fatalf("the forced activation's ERROR does not name the policy path to grant:\n%s", errLine)
	}
}
