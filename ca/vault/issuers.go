package vault

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"

	"github.com/wardenmesh/warden/ca"
)

var _ ca.IssuerLister = (*Upstream)(nil)

// Issuers implements ca.IssuerLister: the issuers of the PKI mount
// (LIST <mount>/issuers, and <mount>/issuer/<id>/json for each one not
// seen before; both unauthenticated in Vault, so warden's policy needs
// no new path), each with the root its chain ends at, the one the sign
// path signs with marked. A mount from before Vault's multi-issuer
// storage (1.11) is read as one issuer, its CA (<mount>/ca/pem).
func (u *Upstream) Issuers(ctx context.Context) ([]ca.UpstreamIssuer, error) {
	s, err := u.list(ctx, u.cfg.PKIMount+"/issuers")
	if err != nil {
		if !legacyMount(err) {
			return nil, err
		}
		roots, err := u.Roots(ctx)
		if err != nil {
			return nil, err
		}
		return []ca.UpstreamIssuer{{ID: "default", Root: roots[0], Signs: true}}, nil
	}
	ids, info, err := parseIssuerList(s)
	if err != nil {
		return nil, fmt.Errorf("vault: list %s/issuers: %w", u.cfg.PKIMount, err)
	}
	ref := u.signRef()
	var out []ca.UpstreamIssuer
	for _, id := range ids {
		root, err := u.issuerRoot(ctx, id)
		if err != nil {
			return nil, err
		}
		if root == nil {
			continue // an intermediate issuer whose chain lacks its root
		}
		name, _ := info[id]["issuer_name"].(string)
		isDefault, _ := info[id]["is_default"].(bool)
		signs := id == ref || name != "" && name == ref || ref == "default" && isDefault
		out = append(out, ca.UpstreamIssuer{ID: id, Name: name, Root: root, Signs: signs})
	}
	return out, nil
}

// signRef is the issuer the sign path signs with: "default" for
// <mount>/root/sign-intermediate, the reference in
// <mount>/issuer/<ref>/sign-intermediate.
func (u *Upstream) signRef() string {
	p := strings.TrimPrefix(u.cfg.SignPath, u.cfg.PKIMount+"/issuer/")
	if p != u.cfg.SignPath && strings.HasSuffix(p, "/sign-intermediate") {
		return strings.TrimSuffix(p, "/sign-intermediate")
	}
	return "default"
}

// issuerRoot is the root an issuer's chain ends at (nil when its chain
// holds none), cached by issuer ID: an issuer's certificate never
// changes.
func (u *Upstream) issuerRoot(ctx context.Context, id string) (*x509.Certificate, error) {
	u.mu.Lock()
	root, ok := u.issuerRoots[id]
	u.mu.Unlock()
	if ok {
		return root, nil
	}
	path := u.cfg.PKIMount + "/issuer/" + url.PathEscape(id) + "/json"
	s, err := u.read(ctx, path)
	if err != nil {
		return nil, err
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault: read %s: empty response", path)
	}
	root, err = parseIssuerRoot(s.Data)
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", path, err)
	}
	u.mu.Lock()
	if u.issuerRoots == nil {
		u.issuerRoots = map[string]*x509.Certificate{}
	}
	u.issuerRoots[id] = root
	u.mu.Unlock()
	return root, nil
}

// parseIssuerList reads a LIST <mount>/issuers answer: the IDs and, for
// each, its key_info (issuer_name, is_default).
func parseIssuerList(s *api.Secret) ([]string, map[string]map[string]any, error) {
	if s == nil || s.Data == nil {
		return nil, nil, nil // no issuers
	}
	keys, ok := s.Data["keys"].([]any)
	if !ok {
		return nil, nil, fmt.Errorf("keys: a %T, want a list", s.Data["keys"])
	}
	rawInfo, _ := s.Data["key_info"].(map[string]any)
	info := map[string]map[string]any{}
	var ids []string
	for _, k := range keys {
		id, ok := k.(string)
		if !ok || id == "" {
			return nil, nil, fmt.Errorf("keys: %v is not an issuer ID", k)
		}
		ids = append(ids, id)
		info[id], _ = rawInfo[id].(map[string]any)
	}
	return ids, info, nil
}

// parseIssuerRoot reads an issuer's <mount>/issuer/<id>/json answer: the
// issuer itself when self-signed, else the first self-signed certificate
// of its ca_chain (nil when there is none).
func parseIssuerRoot(data map[string]any) (*x509.Certificate, error) {
	cert, err := onePEM(data["certificate"])
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if isSelfSigned(cert) {
		return cert, nil
	}
	list, _ := data["ca_chain"].([]any)
	for i, e := range list {
		c, err := onePEM(e)
		if err != nil {
			return nil, fmt.Errorf("ca_chain[%d]: %w", i, err)
		}
		if isSelfSigned(c) {
			return c, nil
		}
	}
	return nil, nil
}

// legacyMount says whether a LIST of issuers failed because the mount has
// no multi-issuer storage (a Vault before 1.11, or a migration not done).
func legacyMount(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	if re.StatusCode == http.StatusNotFound || re.StatusCode == http.StatusMethodNotAllowed || re.StatusCode == http.StatusUnsupportedMediaType {
		return true
	}
	for _, e := range re.Errors {
		if strings.Contains(e, "until migration has completed") {
			return true
		}
	}
	return false
}

func (u *Upstream) list(ctx context.Context, path string) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	s, err := u.client.Logical().ListWithContext(ctx, path)
	if err != nil {
		return nil, u.readError(path, err)
	}
	return s, nil
}

func (u *Upstream) read(ctx context.Context, path string) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	s, err := u.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return nil, u.readError(path, err)
	}
	return s, nil
}

// readError keeps Vault's answer (legacyMount reads it) and says what
// went wrong, naming an unreachable or sealed Vault as such.
func (u *Upstream) readError(path string, err error) error {
	if msg, down := u.endpoint().down(err); down != nil {
		return fmt.Errorf("vault: read %s: %s%w", path, msg, errSuffix(down))
	}
	return &readError{path: path, err: err}
}

type readError struct {
	path string
	err  error
}

func (e *readError) Error() string { return fmt.Sprintf("vault: read %s: %s", e.path, describe(e.err)) }
func (e *readError) Unwrap() error { return e.err }
