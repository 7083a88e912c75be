package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/xds/server"
)

// liveBundles is a foreign bundle that changes under the server.
type liveBundles struct {
	mu      sync.Mutex
	local   []*x509.Certificate
	partner *x509.Certificate
}

func (b *liveBundles) ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ns != "default" {
		return nil
	}
	return map[spiffeid.TrustDomain][]*x509.Certificate{spiffeid.RequireTrustDomainFromString("partner.example"): {b.partner}}
}

func (b *liveBundles) LocalRoots() []*x509.Certificate {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.local
}

func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFederationBundleChangePushed: over a real ADS stream, a federating
// Envoy workload's ISTIO_MUTUAL clusters carry the foreign bundle in the
// SPIFFE validator, and a new foreign root (TrustBundlesChanged), or a
// new local one (RootsChanged), is pushed in new clusters.
func TestFederationBundleChangePushed(t *testing.T) {
	b := &liveBundles{local: []*x509.Certificate{selfSigned(t, "local-1")}, partner: selfSigned(t, "partner-1")}
	srv, c := startADS(t, func(cfg *server.Config) { cfg.Options.TrustBundles = b })
	ctx := asID(t, "spiffe://cluster.local/ns/default/sa/flaskapp", 20*time.Second)
	s, err := c.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"}, TypeUrl: resource.ClusterType}
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
	// roots returns the roots each trust domain has in the first
	// ISTIO_MUTUAL cluster of the response, and ACKs it.
	roots := func() map[string]string {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
		for _, a := range r.Resources {
			var cl clusterv3.Cluster
			if err := a.UnmarshalTo(&cl); err != nil {
				t.Fatal(err)
			}
			if cl.TransportSocket == nil {
				continue
			}
			var u tlsv3.UpstreamTlsContext
			if err := cl.TransportSocket.GetTypedConfig().UnmarshalTo(&u); err != nil {
				t.Fatal(err)
			}
			var sc tlsv3.SPIFFECertValidatorConfig
			if err := u.GetCommonTlsContext().GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().UnmarshalTo(&sc); err != nil {
				t.Fatalf("%s: no SPIFFE validator: %v", cl.Name, err)
			}
			out := map[string]string{}
			for _, td := range sc.TrustDomains {
				certs, err := ca.ParseCerts(td.GetTrustBundle().GetInlineBytes())
				if err != nil || len(certs) != 1 {
					t.Fatalf("%s: %s: %d roots, %v", cl.Name, td.Name, len(certs), err)
				}
				out[td.Name] = certs[0].Subject.CommonName
			}
			return out
		}
		t.Fatal("no ISTIO_MUTUAL cluster")
		return nil
	}
	want := func(got map[string]string, local, partner string) {
		t.Helper()
		if len(got) != 2 || got["cluster.local"] != local || got["partner.example"] != partner {
			t.Fatalf("trust domains %v, want cluster.local: %s, partner.example: %s", got, local, partner)
		}
	}
	want(roots(), "local-1", "partner-1")

	b.mu.Lock()
	b.partner = selfSigned(t, "partner-2")
	b.mu.Unlock()
	srv.TrustBundlesChanged()
	want(roots(), "local-1", "partner-2")

	b.mu.Lock()
	b.local = []*x509.Certificate{selfSigned(t, "local-2")}
	b.mu.Unlock()
	srv.RootsChanged(ctx)
	want(roots(), "local-2", "partner-2")
}

// namedBundles federates no namespace's handshake here; what changes is
// which trust domains are federated at all (xds.FederationNames).
type namedBundles struct {
	mu    sync.Mutex
	local *x509.Certificate
	names []string
}

func (b *namedBundles) ForNamespace(string) map[spiffeid.TrustDomain][]*x509.Certificate { return nil }
func (b *namedBundles) LocalRoots() []*x509.Certificate                                  { return []*x509.Certificate{b.local} }
func (b *namedBundles) FederatedTrustDomains() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.names)
}

// TestFederatedTrustDomainsFollowRelationships: a federated trust domain
// named cluster.local added while the server runs (a relationship added
// to the file, or an object created) changes authorization at once: the
// DENY naming cluster.local/... matches the foreign cluster.local peer as
// written beside the local reading, as it would after a restart.
func TestFederatedTrustDomainsFollowRelationships(t *testing.T) {
	b := &namedBundles{local: selfSigned(t, "local")}
	srv, c := startADS(t, func(cfg *server.Config) {
		cfg.Options.TrustDomain = spiffeid.RequireTrustDomainFromString("mesh.test")
		cfg.Options.TrustBundles = b
	})
	objs, services := server.FlaskappExample(t)
	policy, err := api.Decode([]byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Apply(append(objs, policy...), services); err != nil {
		t.Fatal(err)
	}
	s, err := c.StreamAggregatedResources(asID(t, "spiffe://mesh.test/ns/default/sa/flaskapp", 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	// denies says whether the listeners' RBAC names the principal, and
	// ACKs them.
	denies := func(principal string) bool {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
		for _, a := range r.Resources {
			var l listenerv3.Listener
			if err := a.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			j, err := protojson.Marshal(&l)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(j), `"`+principal+`"`) {
				return true
			}
		}
		return false
	}
	if denies("spiffe://cluster.local/ns/shop/sa/client") {
		t.Fatal("before cluster.local federates: the DENY names the foreign cluster.local principal")
	}
	b.mu.Lock()
	b.names = []string{"cluster.local", "partner.test"}
	b.mu.Unlock()
	srv.TrustBundlesChanged()
	if !denies("spiffe://cluster.local/ns/shop/sa/client") {
		t.Fatal("after cluster.local federates: the DENY does not name the foreign cluster.local principal (authorization kept the trust domains of start)")
	}
}
