package main

// Clusters of the -listeners mode: each case's answer also carries the
// proxy's clusters (ConfigGenTest.Clusters, istiod's CDS), summarised as
// their name, discovery type and the names its mesh TLS accepts from the
// server, so that how a ServiceEntry's resolution and subjectAltNames
// compile can be compared with warden's; and the whole cluster as
// protojson, for the fields a DestinationRule's traffic policy sets.

import (
	"encoding/json"
	"sort"

	"google.golang.org/protobuf/encoding/protojson"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// ClusterSum summarises a cluster: its name, type (STATIC, STRICT_DNS,
// LOGICAL_DNS, EDS, ORIGINAL_DST) and, when it has an upstream TLS
// context validating with SDS ROOTCA (ISTIO_MUTUAL; the transport socket
// or the tlsMode-istio transport socket match of auto-mTLS), the exact
// subject alt names it accepts, sorted ("mtls": true even when none).
type ClusterSum struct {
	Name string   `json:"name"`
	Type string   `json:"type"`
	MTLS bool     `json:"mtls,omitempty"`
	SANs []string `json:"sans,omitempty"`
	// Cluster is the whole cluster (protojson).
	Cluster json.RawMessage `json:"cluster,omitempty"`
}

func summariseCluster(c *cluster.Cluster) (ClusterSum, error) {
	s := ClusterSum{Name: c.GetName(), Type: c.GetType().String()}
	raw, err := protojson.Marshal(c)
	if err != nil {
		return s, err
	}
	s.Cluster = raw
	sockets := []*core.TransportSocket{c.GetTransportSocket()}
	for _, m := range c.GetTransportSocketMatches() {
		if m.GetName() == "tlsMode-istio" {
			sockets = append(sockets, m.GetTransportSocket())
		}
	}
	for _, ts := range sockets {
		a := ts.GetTypedConfig()
		if a == nil || !a.MessageIs(&tls.UpstreamTlsContext{}) {
			continue
		}
		var u tls.UpstreamTlsContext
		if err := a.UnmarshalTo(&u); err != nil {
			return s, err
		}
		cv := u.GetCommonTlsContext().GetCombinedValidationContext()
		if cv.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
			continue
		}
		s.MTLS = true
		dv := cv.GetDefaultValidationContext()
		//lint:ignore SA1019 Istio still builds the untyped matchers
		for _, m := range dv.GetMatchSubjectAltNames() {
			s.SANs = append(s.SANs, m.GetExact())
		}
		for _, m := range dv.GetMatchTypedSubjectAltNames() {
			s.SANs = append(s.SANs, m.GetMatcher().GetExact())
		}
		sort.Strings(s.SANs)
		break
	}
	return s, nil
}
