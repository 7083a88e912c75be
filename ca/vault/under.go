package vault

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"

	"github.com/hashicorp/vault/api"

	"github.com/wardenmesh/warden/ca"
)

// signUnder has the issuer under root sign: the sign path when its
// issuer is under root, else <mount>/issuer/<id>/sign-intermediate
// (Vault 1.11 or later) for the issuer whose root is root, compared as
// certificates. While a root rotated in Vault is not activated, this is
// how a warden without an intermediate under the old root (a start, a
// replica started mid-rotation) still gets one, though Vault's default
// issuer signs under the new root.
//
// s is nil, with notUnder saying why, when no issuer can: the issuer is
// gone from the mount, or Vault refused (naming the policy path to
// grant); the caller then signs at the sign path. An error is returned
// only when Vault cannot be used at all (unreachable, sealed), where the
// sign path would fail too.
func (u *Upstream) signUnder(ctx context.Context, root *x509.Certificate, body map[string]any) (s *api.Secret, path, notUnder string, err error) {
	iss, err := u.Issuers(ctx)
	if err != nil {
		if errors.Is(err, ErrUnreachable) || errors.Is(err, ErrUnavailable) {
			return nil, "", "", err
		}
		return nil, "", fmt.Sprintf("could not find Vault's issuer under the signing root (sha256 %s): %v", ca.Fingerprint(root), err), nil
	}
	var found *ca.UpstreamIssuer
	for i, is := range iss {
		if !is.Root.Equal(root) {
			continue
		}
		if is.Signs {
			return nil, u.cfg.SignPath, "", nil // the sign path signs under it
		}
		if found == nil {
			found = &iss[i]
		}
	}
	if found == nil {
		return nil, "", fmt.Sprintf("no issuer of Vault's PKI mount %s is under the signing root (sha256 %s, %s) any more: it was deleted from the mount", u.cfg.PKIMount, ca.Fingerprint(root), root.Subject), nil
	}
	path = u.cfg.PKIMount + "/issuer/" + url.PathEscape(found.ID) + "/sign-intermediate"
	s, err = u.sign(ctx, path, body)
	if err != nil {
		if errors.Is(err, ErrUnreachable) || errors.Is(err, ErrUnavailable) {
			return nil, "", "", err
		}
		return nil, "", fmt.Sprintf("the issuer under the signing root (%s, sha256 %s) refused: %v", found.ID, ca.Fingerprint(root), err), nil
	}
	return s, path, "", nil
}
