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
	"google.golang.org/grpc/metadata"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/sds"
)

// Fetcher (an sds.Fetcher) obtains SVIDs from a warden (or Istio) CA over gRPC: with the
// current SVID over mTLS while it is valid, otherwise with a bearer token:
// the token of the SDS caller (node-agent mode, read from the incoming
// call's metadata) or the workload's service-account token file.
type Fetcher struct {
	Addr  string
	Roots *x509.CertPool // trust anchors for the CA's TLS certificate
	// RootPool, when set, is asked for the trust anchors at every
	// connection instead (they follow the bundle through a rotation).
	RootPool   func() *x509.CertPool
	ServerName string
	ServerID   spiffeid.ID // the CA's required identity (see Config.ServerID)
	TokenFile  string      // projected service-account token
	KeyType    ca.KeyType
	TTL        time.Duration
	// Current returns the SVID held for id, for renewal over mTLS.
	Current func(id spiffeid.ID) *sds.SVID
}

var _ sds.Fetcher = (*Fetcher)(nil)

// Fetch implements sds.Fetcher. A zero id asks for whatever identity the
// token carries.
func (f *Fetcher) Fetch(ctx context.Context, id spiffeid.ID) (*sds.SVID, error) {
	cfg := Config{Addr: f.Addr, Roots: f.Roots, ServerName: f.ServerName, ServerID: f.ServerID}
	if f.RootPool != nil {
		cfg.Roots = f.RootPool()
	}
	var tok string
	var cur *sds.SVID
	if f.Current != nil && !id.IsZero() {
		cur = f.Current(id)
	}
	if cur != nil {
		cfg.ClientCert = ClientCert(cur)
	} else {
		var err error
		if tok, err = f.token(ctx); err != nil {
			return nil, err
		}
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

// token prefers the caller's token (node agent) over the token file.
func (f *Fetcher) token(ctx context.Context) (string, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) == 1 {
			if t, ok := strings.CutPrefix(v[0], "Bearer "); ok {
				return strings.TrimSpace(t), nil
			}
		}
		if v := md.Get("istio_sds_credentail_header-bin"); len(v) == 1 {
			return strings.TrimSpace(v[0]), nil
		}
	}
	if f.TokenFile == "" {
		return "", errors.New("client: no token: configure a token file or send one with the request")
	}
	b, err := os.ReadFile(f.TokenFile)
	if err != nil {
		return "", fmt.Errorf("client: token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
