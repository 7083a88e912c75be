package sds

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// LocalFetcher issues SVIDs from an in-process authority: the control
// plane's own SDS needs no round trip to itself.
type LocalFetcher struct {
	Authority *ca.Authority
	KeyType   ca.KeyType
	TTL       time.Duration
}

// Fetch implements Fetcher.
func (l *LocalFetcher) Fetch(_ context.Context, id spiffeid.ID) (*SVID, error) {
	key, err := ca.GenerateKey(l.KeyType)
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key, spiffeid.ID{})
	if err != nil {
		return nil, err
	}
	iss, err := l.Authority.Sign(ca.SignRequest{CSR: csr, ID: id, TTL: l.TTL})
	if err != nil {
		return nil, fmt.Errorf("sds: sign %s: %w", id, err)
	}
	certs, err := ca.ParseChain(iss.Chain[:len(iss.Chain)-1])
	if err != nil {
		return nil, err
	}
	return &SVID{ID: id, Certs: certs, Key: key, Roots: l.Authority.Bundle().X509Authorities()}, nil
}
