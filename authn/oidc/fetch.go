package oidc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// maxBody caps a discovery document and a key set.
const maxBody = 1 << 20

// get reads url whole; ctx (the discovery's) bounds it.
func (r *Resolver) get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("GET %s: more than %d bytes", url, maxBody)
	}
	return b, nil
}

// fetch does the discovery: the configuration document, then its
// jwks_uri, which must hold at least one key.
func (r *Resolver) fetch(ctx context.Context, issuer string) (string, error) {
	if !strings.HasPrefix(issuer, "https://") && !strings.HasPrefix(issuer, "http://") {
		return "", fmt.Errorf("oidc: issuer %q is not an http(s) URL, so it cannot be discovered; give jwksUri or jwks", issuer)
	}
	conf := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	b, err := r.get(ctx, conf)
	if err != nil {
		return "", fmt.Errorf("oidc: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JwksURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("oidc: %s: not a discovery document: %v", conf, err)
	}
	// OpenID Connect Discovery 1.0 §4.3: the document's issuer must be
	// identical to the URL it was fetched under (without the trailing
	// slash §4.1 drops before appending the well-known path); a token's
	// iss must in turn be that issuer. Another value means the document
	// is some other issuer's, or a forgery, and none of its keys is used.
	if doc.Issuer != issuer && doc.Issuer != strings.TrimSuffix(issuer, "/") {
		return "", fmt.Errorf("oidc: %s names issuer %q, not %q: a discovery document must name the issuer it is fetched for (OpenID Connect Discovery 1.0 §4.3); no keys are taken from it", conf, doc.Issuer, issuer)
	}
	if doc.JwksURI == "" {
		return "", fmt.Errorf("oidc: %s names no jwks_uri", conf)
	}
	if !strings.HasPrefix(doc.JwksURI, "https://") && !strings.HasPrefix(doc.JwksURI, "http://") {
		return "", fmt.Errorf("oidc: %s: jwks_uri %q is not an http(s) URL", conf, doc.JwksURI)
	}
	kb, err := r.get(ctx, doc.JwksURI)
	if err != nil {
		return "", fmt.Errorf("oidc: keys of %s: %w", issuer, err)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(kb, &set); err != nil || len(set.Keys) == 0 {
		return "", fmt.Errorf("oidc: %s is not a key set with keys", doc.JwksURI)
	}
	return string(kb), nil
}
