package main

// The -listeners mode: real listeners from Istio's own config generator
// (pilot/pkg/networking/core, the code istiod runs), summarised per filter
// chain so that the ORDER of the filters and the connection manager
// settings a proxy gets can be compared with warden's.
//
// Each stdin line is one JSON case:
//
//	{"id":"gw","yaml":"<Istio objects>","meshConfig":"<MeshConfig YAML>",
//	 "proxy":{"type":"router","namespace":"istio-system",
//	          "labels":{"istio":"ingressgateway"},"ip":"10.0.9.1"}}
//
// and for each it writes one JSON line to stdout, in input order:
//
//	{"id":"gw","listeners":[{"name":"0.0.0.0_80","chains":[{"name":"http.80",
//	  "filters":[{"name":"envoy.filters.network.http_connection_manager",
//	   "hcm":{"httpFilters":[{"name":"envoy.filters.http.rbac","action":"DENY"},...],
//	          "useRemoteAddress":true,"xffNumTrustedHops":0,
//	          "forwardClientCertDetails":"SANITIZE_SET"}}]}]}],
//	 "warnings":["..."],"error":""}
//
// Input fields:
//   - yaml: Istio objects (Gateway, VirtualService, ServiceEntry,
//     AuthorizationPolicy, RequestAuthentication, PeerAuthentication, ...),
//     parsed and validated by crd.ParseInputs; a document without
//     metadata.namespace goes to the proxy's namespace; a non-Istio kind is
//     an error. All get one creation timestamp, as Istio's test helper does.
//   - meshConfig: MeshConfig YAML over Istio's defaults
//     (mesh.ApplyMeshConfigDefaults, as istiod reads its ConfigMap):
//     extensionProviders for CUSTOM, defaultConfig.gatewayTopology, ...
//   - proxy: type "sidecar" or "router"; namespace (required); labels (the
//     workload's, which select Gateways and policies: model.Proxy.Labels and
//     Metadata.Labels, as istiod sets them from the pod); ip (default
//     1.1.1.1); id (default <type>.<namespace>). A sidecar's inbound ports
//     come from the services whose endpoints have its ip and namespace
//     (e.g. a ServiceEntry with endpoints), as in istiod.
//
// The generator is core.NewConfigGenTest (fake.go, not a _test file):
// a memory config store, the ServiceEntry registry, a fake Kubernetes client
// for the multicluster controller, a push context initialised from all of
// it, and ConfigGeneratorImpl.BuildListeners for the proxy after
// SetupProxy (sidecar scope, service targets, gateways). It takes a
// test.Failer; test.Wrap supplies one outside a test. Feature flags
// (PILOT_* environment variables) are read at start, as in istiod.
//
// Output, per listener: its name, its listener filters' names, and its
// filter chains (the default_filter_chain last, "default": true), each
// with its name, its match (destination port, server names, transport
// protocol, application protocols) and its network filters in order. A
// filter is its name, and:
//   - for RBAC filters (HTTP or network) the rules' action (ALLOW, DENY,
//     LOG; "" when it has only shadow rules), the shadow rules' action
//     ("" when none) and shadow_rules_stat_prefix (istio_ext_authz_ for
//     CUSTOM, istio_dry_run_* for dry-run; Istio sets it even without
//     shadow rules), so which action is at which position can be compared;
//   - for http_connection_manager: its HTTP filters (the same way) in order,
//     use_remote_address, xff_num_trusted_hops, forward_client_cert_details.
//
// clusters: the proxy's clusters, each its name, type and the names its
// mesh TLS accepts (clusters.go).
//
// warnings: what Istio logged at warn or error level while building.
// error: the case could not be decoded, parsed or built; one bad case
// never stops the stream. Each case builds a fresh generator (tens of
// milliseconds); krt keeps every collection it ever made in a global
// debug handler, so the process grows with each case: this mode is for
// corpora of tens or hundreds of cases, not the RBAC mode's thousands.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/networking/core"
	"istio.io/istio/pkg/test"
)

// ListenerCase is one input line of -listeners.
type ListenerCase struct {
	ID         string `json:"id"`
	YAML       string `json:"yaml"`
	MeshConfig string `json:"meshConfig,omitempty"`
	Proxy      Proxy  `json:"proxy"`
}

// Proxy is the proxy whose listeners are built.
type Proxy struct {
	Type      string            `json:"type"` // sidecar | router
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	IP        string            `json:"ip,omitempty"`
	ID        string            `json:"id,omitempty"`
}

// ListenerResult is one output line of -listeners.
type ListenerResult struct {
	ID        string        `json:"id"`
	Listeners []ListenerSum `json:"listeners"`
	Clusters  []ClusterSum  `json:"clusters,omitempty"`
	// Routes are the route configurations of the listeners' RDS names
	// (ConfigGenTest.RoutesFromListeners), each as protojson.
	Routes   []json.RawMessage `json:"routes,omitempty"`
	Warnings []string          `json:"warnings,omitempty"`
	Error    string            `json:"error"`
}

// ListenerSum summarises a listener.
type ListenerSum struct {
	Name            string     `json:"name"`
	ListenerFilters []string   `json:"listenerFilters,omitempty"`
	Chains          []ChainSum `json:"chains"`
}

// ChainSum summarises a filter chain.
type ChainSum struct {
	Name    string      `json:"name,omitempty"`
	Default bool        `json:"default,omitempty"`
	Match   *MatchSum   `json:"match,omitempty"`
	Filters []FilterSum `json:"filters"`
}

// MatchSum is the part of a filter chain match the comparison uses.
type MatchSum struct {
	DestinationPort      uint32   `json:"destinationPort,omitempty"`
	ServerNames          []string `json:"serverNames,omitempty"`
	TransportProtocol    string   `json:"transportProtocol,omitempty"`
	ApplicationProtocols []string `json:"applicationProtocols,omitempty"`
}

// FilterSum is a network or HTTP filter.
type FilterSum struct {
	Name         string  `json:"name"`
	Action       string  `json:"action,omitempty"`
	Shadow       string  `json:"shadow,omitempty"`
	ShadowPrefix string  `json:"shadowPrefix,omitempty"`
	HCM          *HCMSum `json:"hcm,omitempty"`
	// TCPClusters are a tcp_proxy's cluster, or its weighted clusters as
	// name=weight.
	TCPClusters []string `json:"tcpClusters,omitempty"`
}

// HCMSum is an HTTP connection manager's filters and client-address settings.
type HCMSum struct {
	HTTPFilters              []FilterSum `json:"httpFilters"`
	UseRemoteAddress         bool        `json:"useRemoteAddress"`
	XffNumTrustedHops        uint32      `json:"xffNumTrustedHops"`
	ForwardClientCertDetails string      `json:"forwardClientCertDetails"`
}

func (o *oracle) runListenerLine(line []byte) ListenerResult {
	var c ListenerCase
	// Unknown fields are an error: a misspelt meshConfig would otherwise
	// silently build with Istio's defaults.
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var idOnly struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(line, &idOnly)
		return ListenerResult{ID: idOnly.ID, Listeners: []ListenerSum{}, Error: "decoding case: " + err.Error()}
	}
	res := ListenerResult{ID: c.ID, Listeners: []ListenerSum{}}
	logCapture.reset()
	ls, cs, rs, err := o.buildListeners(c)
	res.Warnings = warnOnly(logCapture.take())
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Listeners, res.Clusters, res.Routes = ls, cs, rs
	return res
}

// warnOnly keeps the warn and error entries of take's "level scope: msg"
// lines (the generator logs much at info level), except "sync failed":
// informers and krt collections log it when their stop channel closes
// before they synced, which is what a case's teardown does to those
// nobody waited for; it arrives asynchronously, often during the next
// case. The multicluster controller's "Timed out waiting for remote
// config source to sync" is the same teardown seen from its own wait
// (kube.WaitForCacheSync returns false when the stop channel closes
// first), on a loaded machine more often than not. What the build needs
// is waited for by NewConfigGenTest (config store, registries,
// VirtualService controller), which fails the case if they do not sync.
func warnOnly(lines []string) []string {
	var out []string
	for _, l := range lines {
		if (strings.HasPrefix(l, "warn ") || strings.HasPrefix(l, "error ")) && !strings.HasSuffix(l, ": sync failed") &&
			!strings.HasSuffix(l, "Timed out waiting for remote config source to sync") {
			out = append(out, l)
		}
	}
	return out
}

func (o *oracle) buildListeners(c ListenerCase) ([]ListenerSum, []ClusterSum, []json.RawMessage, error) {
	p := c.Proxy
	if p.Namespace == "" {
		return nil, nil, nil, errors.New("proxy.namespace is required")
	}
	var typ model.NodeType
	switch p.Type {
	case "sidecar":
		typ = model.SidecarProxy
	case "router":
		typ = model.Router
	default:
		return nil, nil, nil, fmt.Errorf("proxy.type %q: want sidecar or router", p.Type)
	}
	mc, err := o.mesh(Case{MeshConfig: c.MeshConfig})
	if err != nil {
		return nil, nil, nil, err
	}
	configs, others, err := crd.ParseInputs(c.YAML)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, other := range others {
		return nil, nil, nil, fmt.Errorf("%s %s/%s: not an Istio kind", other.Kind, other.Namespace, other.Name)
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range configs {
		if configs[i].Namespace == "" {
			configs[i].Namespace = p.Namespace
		}
		if configs[i].CreationTimestamp.IsZero() {
			configs[i].CreationTimestamp = created
		}
	}
	id := p.ID
	if id == "" {
		id = p.Type + "." + p.Namespace
	}
	ip := p.IP
	if ip == "" {
		ip = "1.1.1.1"
	}

	var out []ListenerSum
	var clusters []ClusterSum
	var routes []json.RawMessage
	var inner error
	err = test.Wrap(func(t test.Failer) {
		// A panic in this goroutine would end the process: make it the
		// case's error instead.
		defer func() {
			if r := recover(); r != nil {
				inner = fmt.Errorf("panic: %v", r)
			}
		}()
		cg := core.NewConfigGenTest(t, core.TestOptions{Configs: configs, MeshConfig: mc})
		proxy := cg.SetupProxy(&model.Proxy{
			Type:            typ,
			ID:              id,
			ConfigNamespace: p.Namespace,
			Labels:          p.Labels,
			IPAddresses:     []string{ip},
			Metadata:        &model.NodeMetadata{Namespace: p.Namespace, Labels: p.Labels},
		})
		listeners := cg.Listeners(proxy)
		for _, l := range listeners {
			s, err := summarise(l)
			if err != nil {
				inner = err
				return
			}
			out = append(out, s)
		}
		for _, cl := range cg.Clusters(proxy) {
			s, err := summariseCluster(cl)
			if err != nil {
				inner = err
				return
			}
			clusters = append(clusters, s)
		}
		for _, rc := range cg.RoutesFromListeners(proxy, listeners) {
			raw, err := protojson.Marshal(rc)
			if err != nil {
				inner = err
				return
			}
			routes = append(routes, raw)
		}
	})
	if err == nil {
		err = inner
	}
	if err != nil {
		return nil, nil, nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if out == nil {
		out = []ListenerSum{}
	}
	sort.Slice(clusters, func(i, j int) bool { return clusters[i].Name < clusters[j].Name })
	return out, clusters, routes, nil
}

func summarise(l *listener.Listener) (ListenerSum, error) {
	s := ListenerSum{Name: l.GetName(), Chains: []ChainSum{}}
	for _, lf := range l.GetListenerFilters() {
		s.ListenerFilters = append(s.ListenerFilters, lf.GetName())
	}
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(append([]*listener.FilterChain{}, chains...), d)
	}
	for i, fc := range chains {
		cs := ChainSum{Name: fc.GetName(), Default: i == len(l.GetFilterChains()), Filters: []FilterSum{}}
		if m := fc.GetFilterChainMatch(); m != nil {
			cs.Match = &MatchSum{DestinationPort: m.GetDestinationPort().GetValue(), ServerNames: m.GetServerNames(),
				TransportProtocol: m.GetTransportProtocol(), ApplicationProtocols: m.GetApplicationProtocols()}
		}
		for _, f := range fc.GetFilters() {
			fs, err := summariseFilter(f.GetName(), f.GetTypedConfig())
			if err != nil {
				return s, fmt.Errorf("listener %s, chain %q: %v", l.GetName(), fc.GetName(), err)
			}
			cs.Filters = append(cs.Filters, fs)
		}
		s.Chains = append(s.Chains, cs)
	}
	return s, nil
}

// summariseFilter reads what the comparison needs from a filter's
// typed_config: an RBAC filter's action and shadow prefix, an HTTP
// connection manager's filters and settings. Filters configured over ECDS
// (no typed_config) are summarised by name.
func summariseFilter(name string, tc *anypb.Any) (FilterSum, error) {
	fs := FilterSum{Name: name}
	if tc == nil {
		return fs, nil
	}
	switch tc.GetTypeUrl() {
	case "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC":
		var r rbachttp.RBAC
		if err := tc.UnmarshalTo(&r); err != nil {
			return fs, err
		}
		fs.Action, fs.Shadow, fs.ShadowPrefix = rbacAction(r.GetRules()), rbacAction(r.GetShadowRules()), r.GetShadowRulesStatPrefix()
	case "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC":
		var r rbacnet.RBAC
		if err := tc.UnmarshalTo(&r); err != nil {
			return fs, err
		}
		fs.Action, fs.Shadow, fs.ShadowPrefix = rbacAction(r.GetRules()), rbacAction(r.GetShadowRules()), r.GetShadowRulesStatPrefix()
	case "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
		var h hcm.HttpConnectionManager
		if err := tc.UnmarshalTo(&h); err != nil {
			return fs, err
		}
		hs := &HCMSum{HTTPFilters: []FilterSum{}, UseRemoteAddress: h.GetUseRemoteAddress().GetValue(),
			XffNumTrustedHops: h.GetXffNumTrustedHops(), ForwardClientCertDetails: h.GetForwardClientCertDetails().String()}
		for _, hf := range h.GetHttpFilters() {
			s, err := summariseFilter(hf.GetName(), hf.GetTypedConfig())
			if err != nil {
				return fs, fmt.Errorf("http filter %s: %v", hf.GetName(), err)
			}
			hs.HTTPFilters = append(hs.HTTPFilters, s)
		}
		fs.HCM = hs
	case "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
		var tp tcpproxy.TcpProxy
		if err := tc.UnmarshalTo(&tp); err != nil {
			return fs, err
		}
		if c := tp.GetCluster(); c != "" {
			fs.TCPClusters = []string{c}
		}
		for _, wc := range tp.GetWeightedClusters().GetClusters() {
			fs.TCPClusters = append(fs.TCPClusters, fmt.Sprintf("%s=%d", wc.GetName(), wc.GetWeight()))
		}
	}
	return fs, nil
}

func rbacAction(r *rbacconfig.RBAC) string {
	if r == nil {
		return ""
	}
	return r.GetAction().String()
}
