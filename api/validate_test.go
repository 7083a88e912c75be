package api_test

import (
	"testing"

	"github.com/wardenmesh/warden/api"
)

// TestValidate checks objects built in Go, where zero values mean unset.
func TestValidate(t *testing.T) {
	t.Parallel()
	meta := api.ObjectMeta{Name: "x", Namespace: "default"}
	cases := []struct {
		name string
		obj  api.Object
		want string // "" for valid
	}{
		{"valid without TypeMeta", &api.PeerAuthentication{Metadata: meta, Spec: api.PeerAuthenticationSpec{
			Selector:      &api.WorkloadSelector{MatchLabels: map[string]string{"app": "flaskapp"}},
			PortLevelMTLS: map[string]api.PeerMTLS{"8080": {Mode: "DISABLE"}}}}, ""},
		{"zero values are unset", &api.AuthorizationPolicy{Metadata: meta}, ""},
		{"protocol in any case", &api.Gateway{Metadata: meta, Spec: api.GatewaySpec{Servers: []api.Server{{
			Port: api.GatewayPort{Number: 80, Protocol: "http", Name: "http"}, Hosts: []string{"*"}}}}}, ""},
		{"credentialName with tlsCertificates", &api.Gateway{Metadata: meta, Spec: api.GatewaySpec{Servers: []api.Server{{
			Port: api.GatewayPort{Number: 443, Protocol: "HTTPS", Name: "https"}, Hosts: []string{"*"},
			TLS: &api.ServerTLSSettings{CredentialName: "a", TLSCertificates: []api.ServerTLSCertificate{{}}}}}}}, ""},
		{"bad enum", &api.AuthorizationPolicy{Metadata: meta, Spec: api.AuthorizationPolicySpec{Action: "ALOW"}},
			`api: AuthorizationPolicy default/x: spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`},
		{"no name", &api.PeerAuthentication{},
			"api: PeerAuthentication: metadata.name is required"},
		{"TypeMeta of another kind", &api.Gateway{TypeMeta: api.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "Gateway"}, Metadata: meta},
			"api: Gateway default/x: apiVersion and kind: security.istio.io/v1 Gateway is not a served version of Gateway"},
		{"cluster-scoped", &api.ClusterRbacConfig{Metadata: api.ObjectMeta{Name: "default", Namespace: "istio-system"}},
			"api: ClusterRbacConfig istio-system/default: ClusterRbacConfig is cluster-scoped and takes no namespace"},
		{"one of, in a map", &api.VirtualService{Metadata: meta, Spec: api.VirtualServiceSpec{HTTP: []api.HTTPRoute{{
			Match: []api.HTTPMatchRequest{{Headers: map[string]api.StringMatch{"x-user": {Exact: "a", Prefix: "b"}}}}}}}},
			`api: VirtualService default/x: spec.http[0].match[0].headers["x-user"]: exact and prefix are mutually exclusive`},
		{"credentialName with credentialNames", &api.Gateway{Metadata: meta, Spec: api.GatewaySpec{Servers: []api.Server{{
			Port: api.GatewayPort{Number: 443, Protocol: "HTTPS", Name: "https"}, Hosts: []string{"*"},
			TLS: &api.ServerTLSSettings{CredentialName: "a", CredentialNames: []string{"b"}}}}}},
			"api: Gateway default/x: spec.servers[0].tls: credentialName and credentialNames are mutually exclusive"},
		{"legacy port selector", &api.Policy{Metadata: meta, Spec: api.PolicySpec{Targets: []api.TargetSelector{{
			Name: "flaskapp", Ports: []api.AuthnPortSelector{{Number: 80, Name: "http"}}}}}},
			"api: Policy default/x: spec.targets[0].ports[0]: number and name are mutually exclusive"},
		{"port key", &api.PeerAuthentication{Metadata: meta, Spec: api.PeerAuthenticationSpec{
			PortLevelMTLS: map[string]api.PeerMTLS{"0": {Mode: "STRICT"}}}},
			`api: PeerAuthentication default/x: spec.portLevelMtls["0"]: key is not a port number (1-65535)`},
		{"duration", &api.DestinationRule{Metadata: meta, Spec: api.DestinationRuleSpec{Host: "h", Subsets: []api.Subset{{Name: "v1",
			TrafficPolicy: &api.TrafficPolicy{OutlierDetection: &api.OutlierDetection{Interval: "5"}}}}}},
			`api: DestinationRule default/x: spec.subsets[0].trafficPolicy.outlierDetection.interval: "5" is not a duration such as "1.5s" or "100ms"`},
		{"lb policy", &api.DestinationRule{Metadata: meta, Spec: api.DestinationRuleSpec{Host: "h", TrafficPolicy: &api.TrafficPolicy{
			LoadBalancer: &api.LoadBalancerSettings{Simple: "RANDOM", ConsistentHash: &api.ConsistentHashLB{UseSourceIP: true}}}}},
			"api: DestinationRule default/x: spec.trafficPolicy.loadBalancer: simple and consistentHash are mutually exclusive"},
		{"targetRef namespace", &api.RequestAuthentication{Metadata: meta, Spec: api.RequestAuthenticationSpec{
			TargetRefs: []api.PolicyTargetReference{{Kind: "Gateway", Name: "g", Namespace: "other"}}}},
			"api: RequestAuthentication default/x: spec.targetRefs[0].namespace: cross namespace referencing is not currently supported"},
		{"empty label key", &api.DestinationRule{Metadata: meta, Spec: api.DestinationRuleSpec{Host: "h",
			WorkloadSelector: &api.WorkloadSelector{MatchLabels: map[string]string{"": "x"}}}},
			`api: DestinationRule default/x: spec.workloadSelector.matchLabels[""]: key must not be empty`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.obj.Validate()
			if got := errString(err); got != tc.want {
				t.Fatalf("Validate() = %s\nwant         %s", got, tc.want)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
