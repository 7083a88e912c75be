package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/sds"
)

// Fetcher (an sds.Fetcher) obtains SVIDs from a warden (or Istio) CA over
// gRPC: with the current SVID over mTLS while it is valid, otherwise with
// a bearer token whose source is explicit: Fetch reads TokenFile (the
// workload's own agent); FetchWithToken takes the token it is given (a
// node agent, with each SDS caller's token) and nothing else. A node
// agent leaves TokenFile empty: the file never stands in for a caller.
type Fetcher struct {
	Addr  string
	Roots *x509.CertPool // trust anchors for the CA's TLS certificate
	// RootPool, when set, is asked for the trust anchors at every
	// connection instead (they follow the bundle through a rotation).
	RootPool   func() *x509.CertPool
	ServerName string
	ServerID   spiffeid.ID // the CA's required identity (see Config.ServerID)
	// TokenFile is the projected service-account token Fetch uses when
	// it has no valid SVID to renew with; empty: Fetch renews over mTLS
	// only.
	TokenFile string
	KeyType   ca.KeyType
	TTL       time.Duration
	// Current returns the SVID held for id, for renewal over mTLS.
	Current func(id spiffeid.ID) *sds.SVID
}

var _ sds.Fetcher = (*Fetcher)(nil)

// Fetch implements sds.Fetcher: it renews id over mTLS with the SVID held
// for it, or else authenticates with TokenFile. A zero id asks for
// whatever identity the token carries.
func (f *Fetcher) Fetch(ctx context.Context, id spiffeid.ID) (*sds.SVID, error) {
	var cur *sds.SVID
	if f.Current != nil && !id.IsZero() {
		cur = f.Current(id)
	}
	if cur != nil {
		return f.fetch(ctx, id, cur, "")
	}
	if f.TokenFile == "" {
		if id.IsZero() {
			return nil, errors.New("client: no token file and no identity to renew: configure a token file")
		}
		return nil, fmt.Errorf("client: %s: no valid certificate to renew with and no token file: the workload's next SDS stream brings its token", id)
	}
	tok, err := ReadTokenFile(f.TokenFile)
	if err != nil {
		return nil, err
	}
	return f.fetch(ctx, id, nil, tok)
}

// ReadTokenFile reads a workload's bearer token from path (the agent's
// and cert request's --token-file). A file holding nothing (a projected
// token the kubelet has not written yet, an interrupted 'warden token >
// file') is an error that says what belongs there.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("client: token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("client: token file %s is empty; it must hold the workload's bearer token: on Kubernetes, a projected service-account token with audience istio-ca (a serviceAccountToken volume, written by the kubelet); in standalone mode, one from 'warden token --namespace NS --sa SA > %s'", path, path)
	}
	return tok, nil
}

// FetchWithToken asks the CA for the identity tok belongs to,
// authenticated with tok alone: a node agent's SDS caller's token. An
// empty tok is refused, never replaced by TokenFile.
func (f *Fetcher) FetchWithToken(ctx context.Context, tok string) (*sds.SVID, error) {
	if tok == "" {
		return nil, errors.New("client: no token given")
	}
	return f.fetch(ctx, spiffeid.ID{}, nil, tok)
}

// fetch asks for id with cur's certificate, or else with tok.
func (f *Fetcher) fetch(ctx context.Context, id spiffeid.ID, cur *sds.SVID, tok string) (*sds.SVID, error) {
	cfg := Config{Addr: f.Addr, Roots: f.Roots, ServerName: f.ServerName, ServerID: f.ServerID}
	if f.RootPool != nil {
		cfg.Roots = f.RootPool()
	}
	if cur != nil {
		cfg.ClientCert = ClientCert(cur)
	}
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := c.Request(ctx, Request{KeyType: f.KeyType, TTL: f.TTL, Token: tok, ID: id})
	if err != nil {
		return nil, err
	}
	if !id.IsZero() && res.ID != id {
		return nil, fmt.Errorf("client: CA issued %s, asked for %s", res.ID, id)
	}
	return &sds.SVID{ID: res.ID, Certs: res.Certs, Key: res.Key, Roots: res.Roots}, nil
}
