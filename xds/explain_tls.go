package xds

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// handshakeRefusal says why the mTLS handshake of filter chain fc (of
// a proxy of namespace ns) refuses a peer presenting principal, before
// any policy filter runs, or "" when it takes it (or explain cannot
// tell: no TLS). It reads the peer validation the proxy got: with SDS
// ROOTCA only the local trust domain (and its aliases) chain to the
// local roots; with Envoy's SPIFFE validator only the trust domains it
// lists; with a proxyless server's certificate provider, see
// proxylessRefusal; then the SAN matchers. note is what the answer
// depends on that the configuration does not show.
func (m *Mesh) handshakeRefusal(fc *listenerv3.FilterChain, ns, principal string) (why, note string, err error) {
	ts := fc.GetTransportSocket().GetTypedConfig()
	if principal == "" || ts == nil || !ts.MessageIs(&tlsv3.DownstreamTlsContext{}) {
		return "", "", nil
	}
	var dtc tlsv3.DownstreamTlsContext
	if err := ts.UnmarshalTo(&dtc); err != nil {
		return "", "", err
	}
	// A peer of a mesh validation (ROOTCA, the SPIFFE validator) has a
	// SPIFFE ID; a MUTUAL gateway's clients may not.
	td := ""
	if id, err := spiffeid.FromString(principal); err == nil {
		td = id.TrustDomain().Name()
	}
	cc := dtc.GetCommonTlsContext()
	notSPIFFE := fmt.Sprintf("the handshake refuses %q: the proxy validates mesh peers, whose certificates carry a SPIFFE ID, and this is none", principal)
	var vc *tlsv3.CertificateValidationContext
	switch v := cc.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		if v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName() == rootCAName && td == "" {
			return notSPIFFE, "", nil
		}
		if v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName() == rootCAName && !m.localTrustDomain(td) {
			return fmt.Sprintf("the handshake refuses %s: this proxy validates peers with ROOTCA, the bundle of %s alone, and trust domain %s is not federated with the workload's namespace "+
				"(name it in the federation relationship's namespaces)", principal, m.opts.TrustDomain.Name(), td), "", nil
		}
		vc = v.CombinedValidationContext.GetDefaultValidationContext()
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		if v.ValidationContextSdsSecretConfig.GetName() == rootCAName && td == "" {
			return notSPIFFE, "", nil
		}
		if v.ValidationContextSdsSecretConfig.GetName() == rootCAName && !m.localTrustDomain(td) {
			return fmt.Sprintf("the handshake refuses %s: this proxy validates peers with ROOTCA, the bundle of %s alone", principal, m.opts.TrustDomain.Name()), "", nil
		}
	case *tlsv3.CommonTlsContext_ValidationContext:
		vc = v.ValidationContext
		if vc.GetCaCertificateProviderInstance().GetCertificateName() == rootCAName {
			if td == "" {
				return notSPIFFE, "", nil
			}
			why, note := m.proxylessRefusal(ns, principal, td)
			return why, note, nil
		}
		if cv := vc.GetCustomValidatorConfig(); cv.GetName() == SPIFFEValidator {
			if td == "" {
				return notSPIFFE, "", nil
			}
			var sc tlsv3.SPIFFECertValidatorConfig
			if err := cv.GetTypedConfig().UnmarshalTo(&sc); err != nil {
				return "", "", err
			}
			if !slices.ContainsFunc(sc.TrustDomains, func(d *tlsv3.SPIFFECertValidatorConfig_TrustDomain) bool { return d.Name == td }) {
				return fmt.Sprintf("the handshake refuses %s: the proxy's SPIFFE validator has no bundle for trust domain %s (the workload's namespace does not federate with it)", principal, td), "", nil
			}
		}
	}
	sans := vc.GetMatchTypedSubjectAltNames()
	if len(sans) == 0 {
		return "", "", nil
	}
	for _, s := range sans {
		if s.GetSanType() == tlsv3.SubjectAltNameMatcher_URI && sanMatches(s.GetMatcher(), principal) {
			return "", "", nil
		}
	}
	return fmt.Sprintf("the handshake refuses %s: no subject alt name matcher of the filter chain accepts it", principal), "", nil
}

// proxylessRefusal judges the handshake of a proxyless gRPC server,
// whose roots are its certificate provider's (the agent's files), not in
// the configuration: by default grpc-go verifies the peer's chain with
// ROOTCA (ca_certificate_file), the local bundle, which only the local
// trust domain and its aliases chain to; with
// GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true it reads the agent's bundle map
// (spiffe_trust_bundle_map_file) and looks the peer's trust domain up
// in it: the local one and those of the namespace's federation
// relationships, no alias. The environment variable is the workload's,
// which explain does not see: where the answer depends on it, the note
// says so.
func (m *Mesh) proxylessRefusal(ns, principal, td string) (why, note string) {
	if td == m.opts.TrustDomain.Name() {
		return "", ""
	}
	federated := false
	if m.opts.TrustBundles != nil {
		_, federated = m.opts.TrustBundles.ForNamespace(ns)[spiffeid.RequireTrustDomainFromString(td)]
	}
	switch {
	case m.localTrustDomain(td):
		return "", fmt.Sprintf("the handshake takes %s with the server's ca_certificate_file (ROOTCA); a server running with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true looks trust domain %s up in the bundle map, which names no alias, and refuses it", principal, td)
	case federated:
		return "", fmt.Sprintf("the handshake takes %s only if the server runs with GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true and the agent's spiffe-bundle-map.json (docs/federation.md); without it the server validates with ROOTCA alone and refuses trust domain %s", principal, td)
	}
	return fmt.Sprintf("the handshake refuses %s: a proxyless gRPC server validates peers with ROOTCA, the bundle of %s alone, or with the bundle map of its namespace's federation relationships, and trust domain %s is in neither "+
		"(name the namespace in the federation relationship's namespaces)", principal, m.opts.TrustDomain.Name(), td), ""
}

// localTrustDomain says whether td is the mesh's trust domain or an
// alias, whose peers chain to the local roots.
func (m *Mesh) localTrustDomain(td string) bool {
	return td == m.opts.TrustDomain.Name() || slices.Contains(m.opts.TrustDomainAliases, td)
}

// sanMatches is Envoy's StringMatcher on one SAN.
func sanMatches(sm *matcherv3.StringMatcher, v string) bool {
	if sm.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	fold := func(s string) string {
		if sm.GetIgnoreCase() {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := sm.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == fold(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, fold(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, fold(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, fold(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		return err == nil && re.MatchString(v)
	}
	return false
}
