package xds

import (
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/ca"
)

// Federation: an Envoy workload whose namespace federates with foreign
// trust domains validates mesh peers with Envoy's SPIFFE certificate
// validator, one trust bundle per trust domain, instead of the flat pool
// of SDS ROOTCA; a peer is then checked only against the bundle of its
// own trust domain, so a foreign CA cannot sign for the local one
// (SPIFFE Federation §4.2; Envoy's SPIFFECertValidatorConfig).

// SPIFFEValidator is the name of Envoy's SPIFFE certificate validator.
const SPIFFEValidator = "envoy.tls.cert_validator.spiffe"

// rootCAName is the SDS name of the local bundle (sds.RootName; xds does
// not import sds).
const rootCAName = "ROOTCA"

// TrustBundles returns the foreign trust domains' roots the workloads of
// namespace ns validate peers with, by trust domain (never the local
// one); none when ns federates with no trust domain. LocalRoots is the
// local trust bundle (ROOTCA's roots).
type TrustBundles interface {
	ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate
	LocalRoots() []*x509.Certificate
}

// federate rewrites c's mesh TLS contexts (those validating peers with
// SDS ROOTCA) for a workload of namespace ns when it federates: see
// spiffeValidation. Listeners and clusters it changes are copies; c's
// other resources are untouched, and nothing changes when ns does not
// federate.
func (m *Mesh) federate(ns string, c *Config) error {
	if m.opts.TrustBundles == nil || c == nil {
		return nil
	}
	foreign := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for td, roots := range m.opts.TrustBundles.ForNamespace(ns) {
		if td != m.opts.TrustDomain && len(roots) > 0 {
			foreign[td] = roots
		}
	}
	if len(foreign) == 0 {
		return nil
	}
	vc, local, err := m.spiffeValidation(foreign)
	if err != nil {
		return err
	}
	for i, r := range c.Listeners {
		l, ok := r.(*listenerv3.Listener)
		if !ok {
			continue
		}
		l = proto.Clone(l).(*listenerv3.Listener)
		changed := false
		chains := slices.Clone(l.FilterChains)
		if l.DefaultFilterChain != nil {
			chains = append(chains, l.DefaultFilterChain)
		}
		for _, fc := range chains {
			ch, err := rewriteSocket(fc.GetTransportSocket(), vc, foreign)
			if err != nil {
				return fmt.Errorf("xds: listener %s: %w", l.Name, err)
			}
			changed = changed || ch
		}
		if changed {
			c.Listeners[i] = l
			c.ListenerRoots = local
		}
	}
	for i, r := range c.Clusters {
		cl, ok := r.(*clusterv3.Cluster)
		if !ok {
			continue
		}
		cl = proto.Clone(cl).(*clusterv3.Cluster)
		sockets := []*corev3.TransportSocket{cl.TransportSocket}
		for _, tm := range cl.TransportSocketMatches {
			sockets = append(sockets, tm.TransportSocket)
		}
		changed := false
		for _, ts := range sockets {
			ch, err := rewriteSocket(ts, vc, nil)
			if err != nil {
				return fmt.Errorf("xds: cluster %s: %w", cl.Name, err)
			}
			changed = changed || ch
		}
		if changed {
			c.Clusters[i] = cl
			c.ClusterRoots = local
		}
	}
	return nil
}

// spiffeValidation is the custom validator config of a federating
// workload: one trust domain per entry, sorted by name, each with its
// own roots inline (PEM): the local trust domain and its aliases with
// the local bundle, each foreign trust domain with its bundle alone. It
// also returns the local roots' fingerprints (Config.ListenerRoots).
func (m *Mesh) spiffeValidation(foreign map[spiffeid.TrustDomain][]*x509.Certificate) (*corev3.TypedExtensionConfig, []string, error) {
	local := m.opts.TrustBundles.LocalRoots()
	if len(local) == 0 {
		return nil, nil, fmt.Errorf("xds: no local trust bundle yet for the SPIFFE validator")
	}
	fps := make([]string, len(local))
	for i, r := range local {
		fps[i] = ca.Fingerprint(r)
	}
	bundles := map[string][]*x509.Certificate{m.opts.TrustDomain.Name(): local}
	for _, a := range m.opts.TrustDomainAliases {
		bundles[a] = local
	}
	for td, roots := range foreign {
		if _, ok := bundles[td.Name()]; ok {
			// A foreign bundle never stands in for a local one (an
			// alias named in a relationship).
			continue
		}
		bundles[td.Name()] = roots
	}
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, name := range slices.Sorted(maps.Keys(bundles)) {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name: name, TrustBundle: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca.EncodeCerts(bundles[name]...)}},
		})
	}
	if err := cfg.ValidateAll(); err != nil {
		return nil, nil, fmt.Errorf("xds: SPIFFE validator: %w", err)
	}
	return &corev3.TypedExtensionConfig{Name: SPIFFEValidator, TypedConfig: typed(cfg)}, fps, nil
}

// CommonRoots is what two sets of resources of one type both carry
// inline (Config.ListenerRoots): nil when neither carries a validator,
// the other's when one does not, else the fingerprints in both (empty,
// not nil, when they share none).
func CommonRoots(a, b []string) []string {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	out := []string{}
	for _, fp := range a {
		if slices.Contains(b, fp) {
			out = append(out, fp)
		}
	}
	return out
}

// rewriteSocket replaces the peer validation of a TLS transport socket
// that validates with SDS ROOTCA (a mesh TLS context) by vc, keeping its
// SAN matchers; on a downstream (inbound) context whose matchers accept
// any ID of the local trust domain (a prefix spiffe://<td>/), the foreign
// trust domains are accepted the same way (sorted). It reports whether it
// changed ts.
func rewriteSocket(ts *corev3.TransportSocket, vc *corev3.TypedExtensionConfig, foreign map[spiffeid.TrustDomain][]*x509.Certificate) (bool, error) {
	a := ts.GetTypedConfig()
	if a == nil {
		return false, nil
	}
	var msg interface {
		proto.Message
		GetCommonTlsContext() *tlsv3.CommonTlsContext
	}
	downstream := false
	switch {
	case a.MessageIs(&tlsv3.DownstreamTlsContext{}):
		msg, downstream = &tlsv3.DownstreamTlsContext{}, true
	case a.MessageIs(&tlsv3.UpstreamTlsContext{}):
		msg = &tlsv3.UpstreamTlsContext{}
	default:
		return false, nil
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return false, err
	}
	cc := msg.GetCommonTlsContext()
	var sans []*tlsv3.SubjectAltNameMatcher
	switch v := cc.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		if v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName() != rootCAName {
			return false, nil
		}
		sans = v.CombinedValidationContext.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		if v.ValidationContextSdsSecretConfig.GetName() != rootCAName {
			return false, nil
		}
	default:
		return false, nil
	}
	if downstream && acceptsTrustDomain(sans) {
		for _, td := range slices.SortedFunc(maps.Keys(foreign), compareTD) {
			sans = append(sans, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: td.IDString() + "/"}}})
		}
	}
	cc.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		MatchTypedSubjectAltNames: sans,
		CustomValidatorConfig:     proto.Clone(vc).(*corev3.TypedExtensionConfig),
	}}
	if err := msg.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
		return false, err
	}
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: typed(msg)}
	return true, nil
}

// acceptsTrustDomain says whether sans accept a whole trust domain (a
// URI prefix spiffe://<td>/), as the inbound mesh TLS context's do.
func acceptsTrustDomain(sans []*tlsv3.SubjectAltNameMatcher) bool {
	for _, s := range sans {
		if p := s.GetMatcher().GetPrefix(); s.GetSanType() == tlsv3.SubjectAltNameMatcher_URI && strings.HasPrefix(p, "spiffe://") && strings.Count(p, "/") == 3 && strings.HasSuffix(p, "/") {
			return true
		}
	}
	return false
}

func compareTD(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) }
