package server_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/xds/server"
)

// Rotation evidence over real ADS streams: a root rotation waits for a
// proxy until it holds the new root where it validates peers with it.

const (
	fedNode   = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local" // default federates with partner.example
	plainNode = "sidecar~127.0.0.9~sleep.other~other.svc.cluster.local"           // other federates with nothing
)

// startRotationADS is startADS with b as the trust bundles and a
// ROOTCA of b's local roots as every proxy's secrets.
func startRotationADS(t *testing.T, b *liveBundles) (*server.Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	return startADS(t, func(cfg *server.Config) {
		cfg.Options.TrustBundles = b
		cfg.Secrets = func(context.Context, spiffeid.ID) ([]types.Resource, error) {
			root, err := sds.ValidationContext(sds.RootName, b.LocalRoots())
			if err != nil {
				return nil, err
			}
			return []types.Resource{root}, nil
		}
	})
}

// sotwProxy is a raw SotW ADS client.
type sotwProxy struct {
	t *testing.T
	s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func openSotW(t *testing.T, c discovery.AggregatedDiscoveryServiceClient, id, node string) sotwProxy {
	t.Helper()
	s, err := c.StreamAggregatedResources(asID(t, id, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	p := sotwProxy{t: t, s: s}
	p.send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType})
	p.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
	p.send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{sds.RootName}})
	return p
}

func (p sotwProxy) send(r *discovery.DiscoveryRequest) {
	p.t.Helper()
	if err := p.s.Send(r); err != nil {
		p.t.Fatal(err)
	}
}

// recv receives one response of each of types, in any order.
func (p sotwProxy) recv(types ...string) map[string]*discovery.DiscoveryResponse {
	p.t.Helper()
	out := map[string]*discovery.DiscoveryResponse{}
	for len(out) < len(types) {
		r, err := p.s.Recv()
		if err != nil {
			p.t.Fatal(err)
		}
		if !slices.Contains(types, r.TypeUrl) || out[r.TypeUrl] != nil {
			p.t.Fatalf("got a %s response, want one each of %v", r.TypeUrl, types)
		}
		out[r.TypeUrl] = r
	}
	return out
}

func (p sotwProxy) ack(r *discovery.DiscoveryResponse) {
	p.t.Helper()
	names := []string(nil)
	if r.TypeUrl == resource.SecretType {
		names = []string{sds.RootName}
	}
	p.send(&discovery.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: names})
}

// nack rejects r, keeping the version accepted before.
func (p sotwProxy) nack(r *discovery.DiscoveryResponse, accepted string) {
	p.t.Helper()
	p.send(&discovery.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: accepted, ResponseNonce: r.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "test: rejected"}})
}

var missingName = regexp.MustCompile(`^(\S+) \((?:delta )?ads stream \d+(?:: (.+) not yet ACKed with the new root)?\)$`)

// wantMissing waits until srv.Missing(fp) counts total streams and names
// want's nodes, each with what it lacks.
func wantMissing(t *testing.T, srv *server.Server, fp string, total int, want map[string]string) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() error {
		n, missing := srv.Missing(fp)
		got := map[string]string{}
		for _, m := range missing {
			sm := missingName.FindStringSubmatch(m)
			if sm == nil {
				return fmt.Errorf("Missing named %q, want <node> (ads stream N: <what> not yet ACKed with the new root)", m)
			}
			got[sm[1]] = sm[2]
		}
		if n != total || !maps.Equal(got, want) {
			return fmt.Errorf("Missing: %d streams, lacking %q; want %d, lacking %q", n, got, total, want)
		}
		return nil
	})
}

// TestRotationWaitsForFederatingProxysInlineRoots: a federating Envoy
// proxy validates peers with the SPIFFE validator, whose bundles are
// inline in its clusters and listeners; ACKing a ROOTCA with the new
// root is not enough for it to hold the root, nor is a NACK of the
// clusters that carry it; once it ACKs clusters and listeners with it,
// it holds it. A proxy that does not federate holds it by ROOTCA alone,
// as before.
func TestRotationWaitsForFederatingProxysInlineRoots(t *testing.T) {
	old, next := selfSigned(t, "local-1"), selfSigned(t, "local-2")
	oldFP, nextFP := ca.Fingerprint(old), ca.Fingerprint(next)
	b := &liveBundles{local: []*x509.Certificate{old}, partner: selfSigned(t, "partner-1")}
	srv, c := startRotationADS(t, b)

	fed := openSotW(t, c, "spiffe://cluster.local/ns/default/sa/flaskapp", fedNode)
	plain := openSotW(t, c, "spiffe://cluster.local/ns/other/sa/sleep", plainNode)
	all := []string{resource.ClusterType, resource.ListenerType, resource.SecretType}
	fedFirst, plainFirst := fed.recv(all...), plain.recv(all...)
	for _, t := range all {
		fed.ack(fedFirst[t])
		plain.ack(plainFirst[t])
	}
	wantMissing(t, srv, oldFP, 2, map[string]string{})
	wantMissing(t, srv, nextFP, 2, map[string]string{fedNode: "ROOTCA, clusters and listeners", plainNode: "ROOTCA"})

	// publish: the bundle is the old and the new root.
	b.mu.Lock()
	b.local = []*x509.Certificate{old, next}
	b.mu.Unlock()
	srv.RootsChanged(context.Background())
	pushed := fed.recv(all...)
	plain.ack(plain.recv(resource.SecretType)[resource.SecretType]) // its clusters and listeners carry no roots

	fed.ack(pushed[resource.SecretType])
	wantMissing(t, srv, nextFP, 2, map[string]string{fedNode: "clusters and listeners"})
	// A NACK of the clusters never counts; an ACK of the listeners does.
	fed.nack(pushed[resource.ClusterType], fedFirst[resource.ClusterType].VersionInfo)
	fed.ack(pushed[resource.ListenerType])
	wantMissing(t, srv, nextFP, 2, map[string]string{fedNode: "clusters"})

	// The rejected clusters are not sent again: the next change (a new
	// partner root) brings new ones, with both local roots still.
	b.mu.Lock()
	b.partner = selfSigned(t, "partner-2")
	b.mu.Unlock()
	srv.TrustBundlesChanged()
	again := fed.recv(resource.ClusterType, resource.ListenerType)
	// The new listeners are not ACKed yet: the last ACKed hold the root.
	fed.ack(again[resource.ClusterType])
	wantMissing(t, srv, nextFP, 2, map[string]string{})
	wantMissing(t, srv, oldFP, 2, map[string]string{})
}

// TestRotationEvidenceDelta: the same on an incremental (delta) stream,
// where an ACK names the response's nonce.
func TestRotationEvidenceDelta(t *testing.T) {
	old, next := selfSigned(t, "local-1"), selfSigned(t, "local-2")
	nextFP := ca.Fingerprint(next)
	b := &liveBundles{local: []*x509.Certificate{old}, partner: selfSigned(t, "partner-1")}
	srv, c := startRotationADS(t, b)
	d, err := c.DeltaAggregatedResources(asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	p := deltaProxy{t: t, s: d}
	p.send(&discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: fedNode}, TypeUrl: resource.ClusterType})
	p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType})
	p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{sds.RootName}})
	recv := func(n int) map[string]*discovery.DeltaDiscoveryResponse {
		t.Helper()
		out := map[string]*discovery.DeltaDiscoveryResponse{}
		for len(out) < n {
			r, err := d.Recv()
			if err != nil {
				t.Fatal(err)
			}
			out[r.TypeUrl] = r
		}
		return out
	}
	ack := func(r *discovery.DeltaDiscoveryResponse) {
		t.Helper()
		p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	for _, r := range recv(3) {
		ack(r)
	}
	wantMissing(t, srv, nextFP, 1, map[string]string{fedNode: "ROOTCA, clusters and listeners"})

	b.mu.Lock()
	b.local = []*x509.Certificate{old, next}
	b.mu.Unlock()
	srv.RootsChanged(context.Background())
	pushed := recv(3)
	ack(pushed[resource.SecretType])
	wantMissing(t, srv, nextFP, 1, map[string]string{fedNode: "clusters and listeners"})
	// A NACK of the clusters never counts, nor an ACK naming another
	// nonce than the last response's; an ACK of the listeners does.
	p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: pushed[resource.ClusterType].Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "test: rejected"}})
	p.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: "not-a-nonce"})
	ack(pushed[resource.ListenerType])
	wantMissing(t, srv, nextFP, 1, map[string]string{fedNode: "clusters"})
	// The next change brings new clusters, with both local roots still.
	b.mu.Lock()
	b.partner = selfSigned(t, "partner-2")
	b.mu.Unlock()
	srv.TrustBundlesChanged()
	ack(recv(2)[resource.ClusterType])
	wantMissing(t, srv, nextFP, 1, map[string]string{})
}
