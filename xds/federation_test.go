package xds_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
)

// staticBundles is a fixed set of foreign bundles by namespace.
type staticBundles struct {
	local []*x509.Certificate
	byNS  map[string]map[spiffeid.TrustDomain][]*x509.Certificate
}

func (s *staticBundles) ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate {

	return s.byNS[ns]
}
func (s *staticBundles) LocalRoots() []*x509.Certificate { return s.local }

func testRoot(t *testing.T, cn string) *x509.Certificate {
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

func meshWith(t *testing.T, dir string, opts xds.Options) *xds.Mesh {
	t.Helper()
	objs, _, err := source.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := xds.NewMesh(objs, services, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFederationEnvoyValidator: an Envoy workload whose namespace
// federates validates mesh peers with the SPIFFE certificate validator,
// one trust domain per entry (its own with ROOTCA's roots, and the
// aliases; each foreign one with its own bundle), inline; SAN matchers
// are kept (inbound also accepts the federated trust domains); ROOTCA is
// no longer referenced. A workload whose namespace does not federate, and
// every proxyless gRPC workload, gets exactly what it gets without
// federation.
func TestFederationEnvoyValidator(t *testing.T) {
	t.Parallel()
	local, partner, other := testRoot(t, "local"), testRoot(t, "partner"), testRoot(t, "other")
	partnerTD, otherTD := spiffeid.RequireTrustDomainFromString("partner.example"), spiffeid.RequireTrustDomainFromString("other.example")
	bundles := &staticBundles{local: []*x509.Certificate{local}, byNS: map[string]map[spiffeid.TrustDomain][]*x509.Certificate{
		"default":  {partnerTD: {partner}, otherTD: {other}},
		"payments": {partnerTD: {partner}},
	}}
	plain := meshWith(t, "testdata/mesh", xds.Options{TrustDomainAliases: []string{"old.local"}})
	fed := meshWith(t, "testdata/mesh", xds.Options{TrustDomainAliases: []string{"old.local"}, TrustBundles: bundles})
	notFed := meshWith(t, "testdata/mesh", xds.Options{TrustDomainAliases: []string{"old.local"},
		TrustBundles: &staticBundles{local: []*x509.Certificate{local}, byNS: map[string]map[spiffeid.TrustDomain][]*x509.Certificate{"payments": {partnerTD: {partner}}}}})

	const flaskapp = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	cfgOf := func(m *xds.Mesh, node, gen string) *xds.Config {
		t.Helper()
		p, err := xds.ParseNodeID(node)
		if err != nil {
			t.Fatal(err)
		}
		p.Generator = gen
		var servers []string
		if gen == xds.GeneratorGRPC {
			servers = []string{xds.ServerListenerName + "127.0.0.2:8080"}
		}
		cfg, _, err := m.ProxyConfig(p, servers)
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	t.Run("not federating: unchanged", func(t *testing.T) {
		for _, gen := range []string{xds.GeneratorEnvoy, xds.GeneratorGRPC} {
			want, got := cfgOf(plain, flaskapp, gen), cfgOf(notFed, flaskapp, gen)
			sameResources(t, "listeners", want.Listeners, got.Listeners)
			sameResources(t, "clusters", want.Clusters, got.Clusters)
			if got.ListenerRoots != nil || got.ClusterRoots != nil {
				t.Errorf("%s: inline roots %v, %v; want none", gen, got.ListenerRoots, got.ClusterRoots)
			}
		}
	})
	t.Run("proxyless gRPC: unchanged", func(t *testing.T) {
		want, got := cfgOf(plain, flaskapp, xds.GeneratorGRPC), cfgOf(fed, flaskapp, xds.GeneratorGRPC)
		sameResources(t, "listeners", want.Listeners, got.Listeners)
		sameResources(t, "clusters", want.Clusters, got.Clusters)
		if got.ListenerRoots != nil || got.ClusterRoots != nil {
			t.Errorf("inline roots %v, %v; want none", got.ListenerRoots, got.ClusterRoots)
		}
	})

	cfg := cfgOf(fed, flaskapp, xds.GeneratorEnvoy)
	base := cfgOf(plain, flaskapp, xds.GeneratorEnvoy)
	// Rotation evidence reads which local roots are inline, by type.
	if want := []string{ca.Fingerprint(local)}; !slices.Equal(cfg.ListenerRoots, want) || !slices.Equal(cfg.ClusterRoots, want) {
		t.Errorf("inline roots: listeners %v, clusters %v; want %v each", cfg.ListenerRoots, cfg.ClusterRoots, want)
	}
	for _, rs := range [][]types.Resource{cfg.Listeners, cfg.Clusters} {
		for _, r := range rs {
			b, _ := protojson.Marshal(r)
			if strings.Contains(string(b), `"ROOTCA"`) {
				t.Errorf("%s still validates with ROOTCA: %s", r.(interface{ GetName() string }).GetName(), b)
			}
		}
	}
	wantTDs := []string{"cluster.local", "old.local", "other.example", "partner.example"}
	wantRoots := map[string]*x509.Certificate{"cluster.local": local, "old.local": local, "other.example": other, "partner.example": partner}
	checkValidator := func(t *testing.T, where string, vc *tlsv3.CertificateValidationContext) {
		t.Helper()
		if vc.GetTrustedCa() != nil || vc.GetCaCertificateProviderInstance() != nil {
			t.Errorf("%s: a flat pool besides the SPIFFE validator: %v", where, vc)
		}
		cv := vc.GetCustomValidatorConfig()
		if cv.GetName() != "envoy.tls.cert_validator.spiffe" {
			t.Fatalf("%s: validator %q, want envoy.tls.cert_validator.spiffe", where, cv.GetName())
		}
		if got := cv.GetTypedConfig().GetTypeUrl(); got != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig" {
			t.Fatalf("%s: typed config %s", where, got)
		}
		var sc tlsv3.SPIFFECertValidatorConfig
		if err := cv.GetTypedConfig().UnmarshalTo(&sc); err != nil {
			t.Fatal(err)
		}
		if sc.TrustBundles != nil {
			t.Errorf("%s: trust_bundles set", where)
		}
		var names []string
		for _, td := range sc.TrustDomains {
			names = append(names, td.Name)
			certs, err := ca.ParseCerts(td.GetTrustBundle().GetInlineBytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != 1 || !certs[0].Equal(wantRoots[td.Name]) {
				t.Errorf("%s: trust domain %s: bundle of %d roots, want only its own root", where, td.Name, len(certs))
			}
		}
		if !slices.Equal(names, wantTDs) {
			t.Errorf("%s: trust domains %v, want %v", where, names, wantTDs)
		}
	}

	t.Run("inbound", func(t *testing.T) {
		n := 0
		for _, r := range cfg.Listeners {
			l := r.(*listenerv3.Listener)
			for _, fc := range l.FilterChains {
				a := fc.GetTransportSocket().GetTypedConfig()
				if a == nil || !a.MessageIs(&tlsv3.DownstreamTlsContext{}) {
					continue
				}
				var d tlsv3.DownstreamTlsContext
				if err := a.UnmarshalTo(&d); err != nil {
					t.Fatal(err)
				}
				n++
				vc := d.GetCommonTlsContext().GetValidationContext()
				checkValidator(t, fc.Name, vc)
				var sans []string
				for _, m := range vc.GetMatchTypedSubjectAltNames() {
					sans = append(sans, m.GetSanType().String()+" prefix "+m.GetMatcher().GetPrefix())
				}
				want := []string{"URI prefix spiffe://cluster.local/", "URI prefix spiffe://old.local/", "URI prefix spiffe://other.example/", "URI prefix spiffe://partner.example/"}
				if !slices.Equal(sans, want) {
					t.Errorf("%s: SAN matchers %q, want %q", fc.Name, sans, want)
				}
				if !d.GetRequireClientCertificate().GetValue() {
					t.Errorf("%s: client certificate no longer required", fc.Name)
				}
				// Everything but the validation context is as before.
				if orig := downstreamOf(t, base, l.Name, fc.Name); orig != nil {
					orig.CommonTlsContext.ValidationContextType = nil
					d.CommonTlsContext.ValidationContextType = nil
					if !proto.Equal(orig, &d) {
						t.Errorf("%s: other fields changed:\n%v\n%v", fc.Name, orig, &d)
					}
				} else {
					t.Errorf("%s: no such chain without federation", fc.Name)
				}
			}
		}
		if n == 0 {
			t.Fatal("no inbound mTLS chain")
		}
	})

	t.Run("outbound ISTIO_MUTUAL", func(t *testing.T) {
		n := 0
		for _, r := range cfg.Clusters {
			c := r.(*clusterv3.Cluster)
			a := c.GetTransportSocket().GetTypedConfig()
			if a == nil {
				continue
			}
			var u tlsv3.UpstreamTlsContext
			if err := a.UnmarshalTo(&u); err != nil {
				t.Fatal(err)
			}
			n++
			vc := u.GetCommonTlsContext().GetValidationContext()
			checkValidator(t, c.Name, vc)
			var orig *tlsv3.UpstreamTlsContext
			for _, b := range base.Clusters {
				if bc := b.(*clusterv3.Cluster); bc.Name == c.Name {
					orig = &tlsv3.UpstreamTlsContext{}
					if err := bc.GetTransportSocket().GetTypedConfig().UnmarshalTo(orig); err != nil {
						t.Fatal(err)
					}
				}
			}
			if orig == nil {
				t.Fatalf("%s: no such cluster without federation", c.Name)
			}
			// The server's SPIFFE IDs, exactly as before.
			wantSANs := orig.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
			if len(wantSANs) == 0 || len(wantSANs) != len(vc.GetMatchTypedSubjectAltNames()) {
				t.Fatalf("%s: SAN matchers %v, want %v", c.Name, vc.GetMatchTypedSubjectAltNames(), wantSANs)
			}
			for i := range wantSANs {
				if !proto.Equal(wantSANs[i], vc.GetMatchTypedSubjectAltNames()[i]) {
					t.Errorf("%s: SAN matcher %d: %v, want %v", c.Name, i, vc.GetMatchTypedSubjectAltNames()[i], wantSANs[i])
				}
			}
			orig.CommonTlsContext.ValidationContextType = nil
			u.CommonTlsContext.ValidationContextType = nil
			if !proto.Equal(orig, &u) {
				t.Errorf("%s: other fields changed:\n%v\n%v", c.Name, orig, &u)
			}
		}
		if n == 0 {
			t.Fatal("no ISTIO_MUTUAL cluster")
		}
	})

	t.Run("the plain mesh is not touched", func(t *testing.T) {
		// federate works on copies: building the federated configuration
		// left nothing behind in a mesh without federation.
		again := cfgOf(plain, flaskapp, xds.GeneratorEnvoy)
		sameResources(t, "listeners", base.Listeners, again.Listeners)
		sameResources(t, "clusters", base.Clusters, again.Clusters)
	})
}

func downstreamOf(t *testing.T, cfg *xds.Config, listener, chain string) *tlsv3.DownstreamTlsContext {
	t.Helper()
	for _, r := range cfg.Listeners {
		l := r.(*listenerv3.Listener)
		if l.Name != listener {
			continue
		}
		for _, fc := range l.FilterChains {
			if fc.Name == chain && fc.GetTransportSocket() != nil {
				var d tlsv3.DownstreamTlsContext
				if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&d); err != nil {
					t.Fatal(err)
				}
				return &d
			}
		}
	}
	return nil
}

func sameResources(t *testing.T, what string, want, got []types.Resource) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%s: %d, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(want[i], got[i]) {
			t.Errorf("%s %d differs:\n%v\n%v", what, i, got[i], want[i])
		}
	}
}

// TestFederationNoLocalBundle: a federating workload's configuration is
// refused (not built with a validator that trusts nothing local) while
// the local bundle is unknown.
func TestFederationNoLocalBundle(t *testing.T) {
	t.Parallel()
	m := meshWith(t, "testdata/mesh", xds.Options{TrustBundles: &staticBundles{byNS: map[string]map[spiffeid.TrustDomain][]*x509.Certificate{
		"default": {spiffeid.RequireTrustDomainFromString("partner.example"): {testRoot(t, "partner")}}}}})
	p, err := xds.ParseNodeID("sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = m.ProxyConfig(p, nil)
	if err == nil || err.Error() != "xds: no local trust bundle yet for the SPIFFE validator" {
		t.Fatalf("got %v", err)
	}
}

// TestCommonRoots: nil stands for "no validator", so it never narrows
// the other side; two validators sharing no root give an empty, non-nil
// set (the type then holds no root).
func TestCommonRoots(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		a, b, want []string
	}{
		{nil, nil, nil},
		{nil, []string{"x"}, []string{"x"}},
		{[]string{"x"}, nil, []string{"x"}},
		{[]string{"x", "y"}, []string{"y", "z"}, []string{"y"}},
		{[]string{"x"}, []string{"y"}, []string{}},
	} {
		got := xds.CommonRoots(c.a, c.b)
		if !slices.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("CommonRoots(%q, %q) = %#v, want %#v", c.a, c.b, got, c.want)
		}
	}
}
