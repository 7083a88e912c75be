package vault_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/vault"
)

// TestSignUnder: after docs/vault.md's two rotation steps Vault's
// default issuer signs under the new root, but an intermediate asked
// under the old root (IntermediateRequest.Under, a rotation not
// activated yet) is signed by the old issuer, with the docs' policy, and
// its bundle is the old root alone. When that cannot be (a policy
// without <mount>/issuer/+/sign-intermediate, the old issuer deleted)
// Vault's default issuer signs, and NotUnder says why, naming the
// policy path to grant.
func TestSignUnder(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "token")
	root := func(name string) *x509.Certificate { return rootCert(t, dir, name) }
	oldRoot := root("vault-root.pem")
	v.RunDoc(t, dir, nil, "setup", "rotate", "replace")
	newRoot := root("vault-root-next.pem")
	up, err := vault.New(context.Background(), config(v, vault.Token{File: filepath.Join(dir, "warden-token")}))
	if err != nil {
		t.Fatal(err)
	}
	sign := func(t *testing.T, up *vault.Upstream, under *x509.Certificate) *ca.UpstreamChain {
		t.Helper()
		req := csrRequest(t)
		req.Under = under
		resp, err := up.SignIntermediate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	chainsTo := func(resp *ca.UpstreamChain, root *x509.Certificate) bool {
		return resp.Cert.CheckSignatureFrom(root) == nil && len(resp.Chain) == 0
	}

	if resp := sign(t, up, nil); !chainsTo(resp, newRoot) || resp.NotUnder != "" {
		t.Fatalf("without Under: chains to the new root %v, NotUnder %q; want the default issuer's", chainsTo(resp, newRoot), resp.NotUnder)
	}
	if resp := sign(t, up, oldRoot); !chainsTo(resp, oldRoot) || resp.NotUnder != "" || len(resp.Roots) != 1 || !resp.Roots[0].Equal(oldRoot) {
		t.Fatalf("under the old root: chains to it %v, NotUnder %q, %d roots; want the old issuer's intermediate, the old root alone", chainsTo(resp, oldRoot), resp.NotUnder, len(resp.Roots))
	}
	if resp := sign(t, up, newRoot); !chainsTo(resp, newRoot) || resp.NotUnder != "" {
		t.Fatalf("under the new root: chains to it %v, NotUnder %q", chainsTo(resp, newRoot), resp.NotUnder)
	}

	// A policy with the default issuer's path only.
	v.API(t, "PUT", "/v1/sys/policies/acl/warden-narrow", map[string]any{"policy": `path "pki/root/sign-intermediate" { capabilities = ["update"] }`})
	narrow := v.API(t, "POST", "/v1/auth/token/create", map[string]any{"policies": []string{"warden-narrow"}})
	nup, err := vault.New(context.Background(), config(v, vault.Token{Token: narrow["auth"].(map[string]any)["client_token"].(string)}))
	if err != nil {
		t.Fatal(err)
	}
	var oldID string
	iss, err := up.Issuers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, is := range iss {
		if is.Root.Equal(oldRoot) {
			oldID = is.ID
		}
	}
	resp := sign(t, nup, oldRoot)
	want := "the issuer under the signing root (" + oldID + ", sha256 " + ca.Fingerprint(oldRoot) + ") refused: vault: sign intermediate at pki/issuer/" + oldID +
		`/sign-intermediate: 403 permission denied: warden's Vault token may not write pki/issuer/` + oldID + `/sign-intermediate; grant update on path "pki/issuer/+/sign-intermediate" in warden's policy (docs/vault.md, Policy)`
	if !chainsTo(resp, newRoot) || resp.NotUnder != want {
		t.Fatalf("without the issuer path in the policy: chains to the new root %v, NotUnder\n got %q\nwant %q", chainsTo(resp, newRoot), resp.NotUnder, want)
	}

	// The old issuer deleted.
	v.API(t, "DELETE", "/v1/pki/issuer/"+oldID, nil)
	resp = sign(t, up, oldRoot)
	if !chainsTo(resp, newRoot) || !strings.Contains(resp.NotUnder, "no issuer of Vault's PKI mount pki is under the signing root (sha256 "+ca.Fingerprint(oldRoot)+", CN=Example Mesh Root CA) any more: it was deleted from the mount") {
		t.Fatalf("the old issuer deleted: chains to the new root %v, NotUnder %q", chainsTo(resp, newRoot), resp.NotUnder)
	}
}
