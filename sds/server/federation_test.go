package server_test

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/sds/server"
	"github.com/wardenmesh/warden/token"
)

// TestFederationChangedFor: a change of one namespace's foreign bundles
// is pushed to the streams of that namespace (the new bundle, by name)
// and to no other stream: another namespace's stream gets no new
// version, as a node agent serving many namespaces needs.
func TestFederationChangedFor(t *testing.T) {
	t.Parallel()
	partner := spiffeid.RequireTrustDomainFromString("partner.test")
	first := catest.Root(t, ca.CAOptions{CommonName: "partner root 1"}).Cert
	second := catest.Root(t, ca.CAOptions{CommonName: "partner root 2"}).Cert
	var mu sync.Mutex
	foreign := map[spiffeid.TrustDomain][]*x509.Certificate{partner: {first}}
	f := newFixture(t, nil, func(c *server.Config) {
		c.Federated = func(id spiffeid.ID) map[spiffeid.TrustDomain][]*x509.Certificate {
			mu.Lock()
			defer mu.Unlock()
			if id != sleepID {
				return nil
			}
			return foreign
		}
	})
	base, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(ns, sa string, names ...string) *envoy {
		tok, err := f.issuer.Mint(token.ServiceAccount{Namespace: ns, Name: sa}, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e, err := f.envoy(t, metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+tok), names...)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	sleep := open("default", "sleep", sds.DefaultName, partner.IDString())
	got, _ := recvWithin(t, sleep, 10*time.Second)
	if roots, _ := ca.ParseCerts(got[partner.IDString()].GetValidationContext().GetTrustedCa().GetInlineBytes()); len(roots) != 1 || !roots[0].Equal(first) {
		t.Fatalf("sleep's %s: %d roots, want partner root 1", partner.IDString(), len(roots))
	}
	other := open("other", "app", sds.DefaultName)
	_, otherVersion := recvWithin(t, other, 10*time.Second)

	mu.Lock()
	foreign = map[spiffeid.TrustDomain][]*x509.Certificate{partner: {second}}
	mu.Unlock()
	f.srv.FederationChangedFor(func(id spiffeid.ID) bool { return id == sleepID })
	got, _ = recvWithin(t, sleep, 10*time.Second)
	if roots, _ := ca.ParseCerts(got[partner.IDString()].GetValidationContext().GetTrustedCa().GetInlineBytes()); len(roots) != 1 || !roots[0].Equal(second) {
		t.Fatalf("after the change, sleep's %s: %d roots, want partner root 2", partner.IDString(), len(roots))
	}
	pushed := make(chan string, 1)
	go func() {
		if _, v, err := other.recv(); err == nil {
			pushed <- v
		}
	}()
	select {
	case v := <-pushed:
		t.Fatalf("namespace other's stream was pushed version %s (had %s) for namespace default's change", v, otherVersion)
	case <-time.After(time.Second):
	}
}
