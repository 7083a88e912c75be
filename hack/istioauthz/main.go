// Command istioauthz is an oracle for warden's rbac compiler and listener
// builder: Istio's own AuthorizationPolicy -> Envoy RBAC builder
// (istio.io/istio pilot/pkg/security/authz/builder, at the version in
// go.mod), driven the way istiod drives it for a sidecar workload; with
// -listeners, Istio's own listener generator (listeners.go); and with
// -ambient, istiod's ambient index, the Address and Authorization
// resources ztunnel is served (ambient.go).
//
// It is a filter. Each stdin line is one JSON case:
//
//	{"id":"c1","yaml":"<AuthorizationPolicy documents>","namespace":"foo",
//	 "labels":{"app":"x"},"rootNamespace":"istio-system",
//	 "trustDomain":"cluster.local","trustDomainAliases":["td2"],"tcp":false}
//
// and for each it writes one JSON line to stdout, in input order:
//
//	{"id":"c1","filters":[{"name":"envoy.filters.http.rbac","typed_config":{"@type":...}}],
//	 "customFilters":[...],"warnings":["..."],"error":""}
//
// Input fields (all but yaml and namespace optional):
//   - yaml: multi-document YAML (or JSON) of AuthorizationPolicy objects,
//     security.istio.io/v1 or v1beta1, in any namespaces. Parsed and validated
//     by Istio's crd.ParseInputs, as the builder test does; a validation
//     failure is the case's error. A document without metadata.namespace is
//     put in "namespace" (as `kubectl apply -n` would). Any other kind is an
//     error.
//   - namespace, labels: the sidecar workload's namespace and labels. Istio's
//     selection logic decides which policies apply (root-namespace policies,
//     selector, targetRef rules), exactly as istiod does:
//     PolicyMatcherForProxy(proxy).WithRootNamespace(root) over
//     model.GetAuthorizationPolicies(env) (a memory config store, as in the
//     test).
//   - rootNamespace, trustDomain, trustDomainAliases: mesh config fields. The
//     mesh config is built like istiod builds it from its ConfigMap
//     (mesh.ApplyMeshConfigDefaults: defaults, validation, and aliases sorted
//     and de-duplicated); unset fields keep Istio's defaults (istio-system,
//     cluster.local, no aliases). The trust domain bundle is
//     trustdomain.NewBundle(trustDomain, aliases), as in istiod.
//   - tcp: BuildTCP() (network filters) instead of BuildHTTP().
//   - meshConfig: extra MeshConfig YAML under the fields above, e.g.
//     extensionProviders for CUSTOM policies.
//   - services: [{"hostname":h,"namespace":ns}] known to the push context
//     (ext_authz providers must name one).
//   - golden: written by -list-istio-golden; ignored by the filter.
//
// Output fields:
//   - filters: what builder.New(bundle, push, policies, Option{}).BuildHTTP()
//     (or BuildTCP()) returns, each hcm.HttpFilter / listener.Filter as
//     protojson with UseProtoNames (so typed_config is a
//     google.protobuf.Any with "@type"). [] when no ALLOW/DENY/AUDIT policy
//     applies.
//   - customFilters: the same with Option{IsCustomBuilder: true}, i.e. the
//     CUSTOM (ext_authz) filters; omitted when empty. istiod runs both
//     builders for every sidecar and puts customFilters before filters in the
//     chain (pilot/pkg/networking/core/listener_builder.go). Without an
//     extension provider in meshConfig, Istio emits a DENY RBAC filter whose
//     policy names end in "-deny-due-to-bad-CUSTOM-action".
//   - warnings: what Istio logged while building (the builder only logs, it
//     does not fail, e.g. a skipped invalid rule); omitted when none.
//   - error: non-empty when the case could not be decoded, parsed, validated
//     or built; then filters is []. One bad case never stops the stream.
//
// Option: the default builder.Option{} (UseFilterState false), because that
// is what istiod uses for a sidecar: listener_builder.go calls
// authz.NewBuilder(authz.Local, push, node, node.Type == model.Waypoint).
// UseFilterState true is only used for waypoints and the sidecar's ambient
// HBONE inbound listener (listener_inbound.go) — principals then match
// filter_state "io.istio.peer_principal" instead of "authenticated". The
// builder test's "extended" loop does not change the Option: it only swaps in
// the extended-*-out.yaml goldens, which are byte-identical to the others.
//
// Flags:
//
//	-list-istio-golden DIR   print, as input lines, the cases of Istio's builder
//	                         test (TestGenerator_GenerateHTTP/GenerateTCP) for the
//	                         golden inputs in DIR/http and DIR/tcp (hack/istioauthz.sh
//	                         copies them to <cache>/istio-golden), with the test's
//	                         workload (foo, app=httpbin, version=v1), trust domain
//	                         bundle, mesh config and services; inputs no test uses
//	                         get the defaults.
//	-check-istio-golden DIR  run those cases through the filter (JSON round trip
//	                         included) and compare with the *-out.yaml files in DIR
//	                         (Istio's testdata directory); exit 1 on a mismatch.
//	-listeners               a second filter: each line is a set of Istio objects
//	                         and a proxy (sidecar or router), and the answer the
//	                         listeners Istio's own config generator
//	                         (pilot/pkg/networking/core) builds for it, summarised:
//	                         per filter chain its match, its filters in order, RBAC
//	                         actions, and the connection manager's client-address
//	                         settings, a tcp_proxy's clusters (weighted ones as
//	                         name=weight); the proxy's clusters (name, type, the
//	                         names its mesh TLS accepts, and the whole cluster as
//	                         protojson); and the route configurations of its
//	                         listeners (protojson). See listeners.go and
//	                         clusters.go.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/config/memory"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/security/authz/builder"
	"istio.io/istio/pilot/pkg/security/trustdomain"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/mesh/meshwatcher"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/gvk"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/protomarshal"
)

// Case is one input line.
type Case struct {
	ID                 string            `json:"id"`
	YAML               string            `json:"yaml"`
	Namespace          string            `json:"namespace"`
	Labels             map[string]string `json:"labels,omitempty"`
	RootNamespace      string            `json:"rootNamespace,omitempty"`
	TrustDomain        string            `json:"trustDomain,omitempty"`
	TrustDomainAliases []string          `json:"trustDomainAliases,omitempty"`
	TCP                bool              `json:"tcp,omitempty"`
	MeshConfig         string            `json:"meshConfig,omitempty"`
	Services           []Service         `json:"services,omitempty"`
	Golden             *Golden           `json:"golden,omitempty"`
}

// Service is a service the push context knows (for ext_authz providers).
type Service struct {
	Hostname  string `json:"hostname"`
	Namespace string `json:"namespace"`
}

// Golden ties a case to Istio's builder test; informational for the filter.
type Golden struct {
	Test   string   `json:"test"`             // Istio's subtest name, "" if no test uses the input
	Want   []string `json:"want"`             // expected outputs, relative to the testdata directory
	Custom bool     `json:"custom,omitempty"` // Want is compared with customFilters (the test builds with IsCustomBuilder)
}

// Result is one output line.
type Result struct {
	ID            string            `json:"id"`
	Filters       []json.RawMessage `json:"filters"`
	CustomFilters []json.RawMessage `json:"customFilters,omitempty"`
	Warnings      []string          `json:"warnings,omitempty"`
	Error         string            `json:"error"`
}

func main() {
	list := flag.String("list-istio-golden", "", "print the cases of Istio's builder golden tests for the inputs in `DIR`/{http,tcp}")
	check := flag.String("check-istio-golden", "", "run Istio's builder golden tests against the *-out.yaml files in `DIR`")
	listeners := flag.Bool("listeners", false, "read listener cases (Istio objects and a proxy) and write the listeners Istio's config generator builds (listeners.go)")
	ambientMode := flag.Bool("ambient", false, "read ambient cases (Kubernetes and Istio objects) and write the Address and Authorization resources istiod's ambient index serves ztunnel (ambient.go)")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}

	o, err := newOracle()
	if err != nil {
		fmt.Fprintln(os.Stderr, "istioauthz:", err)
		os.Exit(1)
	}
	switch {
	case *list != "":
		err = listGolden(*list, os.Stdout)
	case *check != "":
		err = checkGolden(o, *check)
	case *listeners:
		err = filter(os.Stdin, os.Stdout, func(line []byte) any { return o.runListenerLine(line) })
	case *ambientMode:
		err = filter(os.Stdin, os.Stdout, func(line []byte) any { return runAmbientLine(line) })
	default:
		err = filter(os.Stdin, os.Stdout, func(line []byte) any { return o.runLine(line) })
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "istioauthz:", err)
		os.Exit(1)
	}
}

// oracle holds what lives across cases: one config store (emptied after each
// case; a store per case would leak, krt registers every collection with a
// global debug handler), one mesh watcher, and the captured Istio log.
type oracle struct {
	store   *memory.Store
	watcher meshwatcher.TestWatcher
	env     *model.Environment
	meshes  map[string]meshResult
}

type meshResult struct {
	mc  *meshconfig.MeshConfig
	err error
}

func newOracle() (*oracle, error) {
	if err := captureIstioLog(); err != nil {
		return nil, err
	}
	store := memory.Make(collections.Pilot)
	w := meshwatcher.NewTestWatcher(mesh.DefaultMeshConfig())
	return &oracle{
		store:   store,
		watcher: w,
		env:     &model.Environment{ConfigStore: store, Watcher: w},
		meshes:  map[string]meshResult{},
	}, nil
}

// filter answers each non-empty input line with run's result as one JSON
// line.
func filter(in io.Reader, out io.Writer, run func(line []byte) any) error {
	r := bufio.NewReaderSize(in, 1<<20)
	w := bufio.NewWriterSize(out, 1<<16)
	for {
		line, rerr := r.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			res := run(line)
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			w.Write(b)
			w.WriteByte('\n')
			// Flush when the caller has nothing more queued, so a caller
			// writing one case and waiting for its line is answered.
			if r.Buffered() == 0 {
				if err := w.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return w.Flush()
		}
		if rerr != nil {
			w.Flush()
			return rerr
		}
	}
}

func (o *oracle) runLine(line []byte) Result {
	var c Case
	if err := json.Unmarshal(line, &c); err != nil {
		var idOnly struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(line, &idOnly)
		return Result{ID: idOnly.ID, Filters: []json.RawMessage{}, Error: "decoding case: " + err.Error()}
	}
	return o.run(c)
}

func (o *oracle) run(c Case) (res Result) {
	res = Result{ID: c.ID, Filters: []json.RawMessage{}}
	logCapture.reset()
	defer func() {
		if p := recover(); p != nil {
			res.Filters, res.CustomFilters = []json.RawMessage{}, nil
			res.Error = fmt.Sprintf("panic: %v", p)
		}
		res.Warnings = logCapture.take()
	}()
	local, custom, err := o.build(c)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.Filters, res.CustomFilters = local, custom
	return res
}

func (o *oracle) build(c Case) (local, custom []json.RawMessage, err error) {
	if c.Namespace == "" {
		return nil, nil, errors.New("namespace is required")
	}
	mc, err := o.mesh(c)
	if err != nil {
		return nil, nil, err
	}

	configs, others, err := crd.ParseInputs(c.YAML)
	if err != nil {
		return nil, nil, err
	}
	for _, other := range others {
		return nil, nil, fmt.Errorf("%s %s/%s: not an Istio kind", other.Kind, other.Namespace, other.Name)
	}
	for i := range configs {
		if configs[i].GroupVersionKind.Kind != gvk.AuthorizationPolicy.Kind {
			return nil, nil, fmt.Errorf("%s %s/%s: only AuthorizationPolicy is supported",
				configs[i].GroupVersionKind.Kind, configs[i].Namespace, configs[i].Name)
		}
		if configs[i].Namespace == "" {
			configs[i].Namespace = c.Namespace
		}
	}

	o.watcher.Set(mc)
	var created []config.Config
	defer func() {
		for _, cfg := range created {
			_ = o.store.Delete(cfg.GroupVersionKind, cfg.Name, cfg.Namespace, nil)
		}
	}()
	for _, cfg := range configs {
		if _, err := o.store.Create(cfg); err != nil {
			return nil, nil, fmt.Errorf("%s/%s: %v", cfg.Namespace, cfg.Name, err)
		}
		created = append(created, cfg)
	}
	authz := model.GetAuthorizationPolicies(o.env)

	push := &model.PushContext{AuthzPolicies: authz, Mesh: mc}
	push.ServiceIndex.HostnameAndNamespace = map[host.Name]map[string]*model.Service{}
	for _, s := range c.Services {
		h := host.Name(s.Hostname)
		if push.ServiceIndex.HostnameAndNamespace[h] == nil {
			push.ServiceIndex.HostnameAndNamespace[h] = map[string]*model.Service{}
		}
		push.ServiceIndex.HostnameAndNamespace[h][s.Namespace] = &model.Service{Hostname: h}
	}
	proxy := &model.Proxy{
		Type:            model.SidecarProxy,
		ID:              "istioauthz." + c.Namespace,
		ConfigNamespace: c.Namespace,
		Labels:          c.Labels,
		Metadata:        &model.NodeMetadata{Labels: c.Labels, Namespace: c.Namespace},
	}

	// As pilot/pkg/networking/plugin/authz.newBuilder does.
	bundle := trustdomain.NewBundle(mc.TrustDomain, mc.TrustDomainAliases)
	selection := model.PolicyMatcherForProxy(proxy).WithRootNamespace(authz.RootNamespace)
	policies := authz.ListAuthorizationPolicies(selection)

	if local, err = buildFilters(builder.New(bundle, push, policies, builder.Option{}), c.TCP); err != nil {
		return nil, nil, err
	}
	if custom, err = buildFilters(builder.New(bundle, push, policies, builder.Option{IsCustomBuilder: true}), c.TCP); err != nil {
		return nil, nil, err
	}
	if len(custom) == 0 {
		custom = nil
	}
	return local, custom, nil
}

// mesh builds the case's mesh config the way istiod reads its ConfigMap,
// memoized (it is the same for most cases).
func (o *oracle) mesh(c Case) (*meshconfig.MeshConfig, error) {
	key, err := json.Marshal([]any{c.MeshConfig, c.RootNamespace, c.TrustDomain, c.TrustDomainAliases})
	if err != nil {
		return nil, err
	}
	if r, ok := o.meshes[string(key)]; ok {
		return r.mc, r.err
	}
	mc, err := buildMesh(c)
	if err != nil {
		err = fmt.Errorf("mesh config: %v", err)
	}
	if len(o.meshes) > 1000 {
		clear(o.meshes)
	}
	o.meshes[string(key)] = meshResult{mc, err}
	return mc, err
}

func buildMesh(c Case) (*meshconfig.MeshConfig, error) {
	m := map[string]any{}
	if c.MeshConfig != "" {
		if err := yaml.Unmarshal([]byte(c.MeshConfig), &m); err != nil {
			return nil, err
		}
		if m == nil {
			m = map[string]any{}
		}
	}
	if c.RootNamespace != "" {
		m["rootNamespace"] = c.RootNamespace
	}
	if c.TrustDomain != "" {
		m["trustDomain"] = c.TrustDomain
	}
	if c.TrustDomainAliases != nil {
		m["trustDomainAliases"] = c.TrustDomainAliases
	}
	y, err := yaml.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mesh.ApplyMeshConfigDefaults(string(y))
}

func buildFilters(b *builder.Builder, tcp bool) ([]json.RawMessage, error) {
	out := []json.RawMessage{}
	if b == nil { // no policy of the builder's kind applies
		return out, nil
	}
	var msgs []proto.Message
	if tcp {
		for _, f := range b.BuildTCP() {
			msgs = append(msgs, f)
		}
	} else {
		for _, f := range b.BuildHTTP() {
			msgs = append(msgs, f)
		}
	}
	for _, m := range msgs {
		j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer // protojson's whitespace is deliberately unstable
		if err := json.Compact(&buf, j); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

// Istio logs to stdout by default, which is our output. Send it to a sink
// that keeps each case's entries for Result.Warnings.
var logCapture = &captureSink{}

type captureSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *captureSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}
func (s *captureSink) Sync() error  { return nil }
func (s *captureSink) Close() error { return nil }

func (s *captureSink) reset() {
	s.mu.Lock()
	s.buf.Reset()
	s.mu.Unlock()
}

func (s *captureSink) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, line := range strings.Split(s.buf.String(), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e struct {
			Level string `json:"level"`
			Scope string `json:"scope"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg != "" {
			out = append(out, fmt.Sprintf("%s %s: %s", e.Level, e.Scope, e.Msg))
		} else {
			out = append(out, line)
		}
	}
	s.buf.Reset()
	return out
}

func captureIstioLog() error {
	if err := zap.RegisterSink("istioauthz", func(*url.URL) (zap.Sink, error) { return logCapture, nil }); err != nil {
		return err
	}
	opts := istiolog.DefaultOptions()
	opts.OutputPaths = []string{"istioauthz://capture"}
	opts.ErrorOutputPaths = []string{"stderr"}
	opts.JSONEncoding = true
	return istiolog.Configure(opts)
}

// The cases of Istio's pilot/pkg/security/authz/builder/builder_test.go.

var httpbin = map[string]string{"app": "httpbin", "version": "v1"}

// The test's services: ext_authz providers name this one.
var goldenServices = []Service{{Hostname: "my-custom-ext-authz.foo.svc.cluster.local", Namespace: "foo"}}

// The test's mesh configs (Go literals there), as MeshConfig YAML.
const (
	meshConfigGRPCNoNamespace = `
extensionProviders:
- name: default
  envoyExtAuthzGrpc:
    service: my-custom-ext-authz.foo.svc.cluster.local
    port: 9000
    failOpen: true
    statusOnError: "403"
`
	meshConfigGRPC = `
extensionProviders:
- name: default
  envoyExtAuthzGrpc:
    service: foo/my-custom-ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 0.002s
    failOpen: true
    statusOnError: "403"
    includeRequestBodyInCheck:
      maxRequestBytes: 4096
      allowPartialMessage: true
`
	meshConfigHTTP = `
extensionProviders:
- name: default
  envoyExtAuthzHttp:
    service: foo/my-custom-ext-authz.foo.svc.cluster.local
    port: 9000
    timeout: 10s
    failOpen: true
    statusOnError: "403"
    pathPrefix: /check
    includeRequestHeadersInCheck: [x-custom-id, x-prefix-*, "*-suffix"]
    includeHeadersInCheck: [should-not-include-when-IncludeRequestHeadersInCheck-is-set]
    includeAdditionalHeadersInCheck: {x-header-1: value-1, x-header-2: value-2}
    includeRequestBodyInCheck: {maxRequestBytes: 2048, allowPartialMessage: true, packAsBytes: true}
    headersToUpstreamOnAllow: [Authorization, x-prefix-*, "*-suffix"]
    headersToDownstreamOnDeny: [Set-cookie, x-prefix-*, "*-suffix"]
    headersToDownstreamOnAllow: [Set-cookie, x-prefix-*, "*-suffix"]
`
	meshConfigInvalid = `
extensionProviders:
- name: default
  envoyExtAuthzHttp:
    service: foo/my-custom-ext-authz
    port: 999999
    pathPrefix: check
    statusOnError: "999"
`
)

type goldenCase struct {
	name    string
	td      string // trustdomain.NewBundle(td, aliases) in the test; "" = zero Bundle there
	aliases []string
	mesh    string
	input   string
	want    []string
}

var goldenHTTP = []goldenCase{
	{name: "allow-empty-rule", input: "allow-empty-rule-in.yaml", want: []string{"allow-empty-rule-out.yaml"}},
	{name: "allow-full-rule", input: "allow-full-rule-in.yaml", want: []string{"allow-full-rule-out.yaml"}},
	{name: "allow-nil-rule", input: "allow-nil-rule-in.yaml", want: []string{"allow-nil-rule-out.yaml"}},
	{name: "allow-path", input: "allow-path-in.yaml", want: []string{"allow-path-out.yaml"}},
	{name: "audit-full-rule", input: "audit-full-rule-in.yaml", want: []string{"audit-full-rule-out.yaml"}},
	{name: "custom-grpc-provider-no-namespace", mesh: meshConfigGRPCNoNamespace, input: "custom-simple-http-in.yaml",
		want: []string{"custom-grpc-provider-no-namespace-out1.yaml", "custom-grpc-provider-no-namespace-out2.yaml"}},
	{name: "custom-grpc-provider", mesh: meshConfigGRPC, input: "custom-simple-http-in.yaml",
		want: []string{"custom-grpc-provider-out1.yaml", "custom-grpc-provider-out2.yaml"}},
	{name: "custom-http-provider", mesh: meshConfigHTTP, input: "custom-simple-http-in.yaml",
		want: []string{"custom-http-provider-out1.yaml", "custom-http-provider-out2.yaml"}},
	{name: "custom-bad-multiple-providers", mesh: meshConfigHTTP, input: "custom-bad-multiple-providers-in.yaml",
		want: []string{"custom-bad-multiple-providers-out1.yaml", "custom-bad-multiple-providers-out2.yaml"}},
	{name: "custom-bad-invalid-config", mesh: meshConfigInvalid, input: "custom-simple-http-in.yaml", want: []string{"custom-bad-out.yaml"}},
	{name: "deny-and-allow", input: "deny-and-allow-in.yaml", want: []string{"deny-and-allow-out1.yaml", "deny-and-allow-out2.yaml"}},
	{name: "deny-empty-rule", input: "deny-empty-rule-in.yaml", want: []string{"deny-empty-rule-out.yaml"}},
	{name: "dry-run-allow-and-deny", input: "dry-run-allow-and-deny-in.yaml",
		want: []string{"dry-run-allow-and-deny-out1.yaml", "dry-run-allow-and-deny-out2.yaml"}},
	{name: "dry-run-allow", input: "dry-run-allow-in.yaml", want: []string{"dry-run-allow-out.yaml"}},
	{name: "dry-run-mix", input: "dry-run-mix-in.yaml", want: []string{"dry-run-mix-out.yaml"}},
	{name: "multiple-policies", input: "multiple-policies-in.yaml", want: []string{"multiple-policies-out.yaml"}},
	{name: "single-policy", input: "single-policy-in.yaml", want: []string{"single-policy-out.yaml"}},
	{name: "trust-domain-one-alias", td: "td1", aliases: []string{"cluster.local"},
		input: "simple-policy-td-aliases-in.yaml", want: []string{"simple-policy-td-aliases-out.yaml"}},
	{name: "trust-domain-multiple-aliases", td: "td1", aliases: []string{"cluster.local", "some-td"},
		input: "simple-policy-multiple-td-aliases-in.yaml", want: []string{"simple-policy-multiple-td-aliases-out.yaml"}},
	{name: "trust-domain-wildcard-in-principal", td: "td1", aliases: []string{"foobar"},
		input: "simple-policy-principal-with-wildcard-in.yaml", want: []string{"simple-policy-principal-with-wildcard-out.yaml"}},
	{name: "trust-domain-aliases-in-source-principal", td: "new-td", aliases: []string{"old-td", "some-trustdomain"},
		input: "td-aliases-source-principal-in.yaml", want: []string{"td-aliases-source-principal-out.yaml"}},
	{name: "trust-domains-field", input: "trust-domains-in.yaml", want: []string{"trust-domains-out.yaml"}},
}

var goldenTCP = []goldenCase{
	{name: "allow-both-http-tcp", input: "allow-both-http-tcp-in.yaml", want: []string{"allow-both-http-tcp-out.yaml"}},
	{name: "allow-only-http", input: "allow-only-http-in.yaml", want: []string{"allow-only-http-out.yaml"}},
	{name: "audit-both-http-tcp", input: "audit-both-http-tcp-in.yaml", want: []string{"audit-both-http-tcp-out.yaml"}},
	{name: "custom-both-http-tcp", mesh: meshConfigGRPC, input: "custom-both-http-tcp-in.yaml",
		want: []string{"custom-both-http-tcp-out1.yaml", "custom-both-http-tcp-out2.yaml"}},
	{name: "custom-only-http", mesh: meshConfigHTTP, input: "custom-only-http-in.yaml", want: []string{}},
	{name: "deny-both-http-tcp", input: "deny-both-http-tcp-in.yaml", want: []string{"deny-both-http-tcp-out.yaml"}},
	{name: "dry-run-mix", input: "dry-run-mix-in.yaml", want: []string{"dry-run-mix-out.yaml"}},
}

// goldenCases returns the test's cases for the inputs present in dir, then a
// case with default settings for every other *-in.yaml there.
func goldenCases(dir string) ([]Case, error) {
	var cases []Case
	for _, sub := range []struct {
		dir   string
		tcp   bool
		test  string
		table []goldenCase
	}{
		{"http", false, "TestGenerator_GenerateHTTP", goldenHTTP},
		{"tcp", true, "TestGenerator_GenerateTCP", goldenTCP},
	} {
		used := map[string]bool{}
		for _, g := range sub.table {
			data, err := os.ReadFile(filepath.Join(dir, sub.dir, g.input))
			if errors.Is(err, os.ErrNotExist) {
				continue
			} else if err != nil {
				return nil, err
			}
			used[g.input] = true
			want := []string{}
			for _, w := range g.want {
				want = append(want, sub.dir+"/"+w)
			}
			cases = append(cases, Case{
				ID:                 sub.dir + "/" + g.name,
				YAML:               string(data),
				Namespace:          "foo",
				Labels:             httpbin,
				TrustDomain:        g.td,
				TrustDomainAliases: g.aliases,
				TCP:                sub.tcp,
				MeshConfig:         g.mesh,
				Services:           goldenServices,
				Golden:             &Golden{Test: sub.test + "/" + g.name, Want: want, Custom: g.mesh != ""},
			})
		}
		inputs, err := filepath.Glob(filepath.Join(dir, sub.dir, "*-in.yaml"))
		if err != nil {
			return nil, err
		}
		sort.Strings(inputs)
		for _, in := range inputs {
			if used[filepath.Base(in)] {
				continue
			}
			data, err := os.ReadFile(in)
			if err != nil {
				return nil, err
			}
			cases = append(cases, Case{
				ID:        sub.dir + "/" + strings.TrimSuffix(filepath.Base(in), "-in.yaml"),
				YAML:      string(data),
				Namespace: "foo",
				Labels:    httpbin,
				TCP:       sub.tcp,
				Services:  goldenServices,
				Golden:    &Golden{Want: []string{}},
			})
		}
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("no *-in.yaml in %s/http or %s/tcp", dir, dir)
	}
	return cases, nil
}

func listGolden(dir string, out io.Writer) error {
	cases, err := goldenCases(dir)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	for _, c := range cases {
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		w.Write(b)
		w.WriteByte('\n')
	}
	return w.Flush()
}

// checkGolden is the builder test's verify(), on this program's JSON output.
func checkGolden(o *oracle, dir string) error {
	cases, err := goldenCases(dir)
	if err != nil {
		return err
	}
	var failed, checked int
	for _, c := range cases {
		if c.Golden.Test == "" {
			continue
		}
		checked++
		line, _ := json.Marshal(c)
		var res Result
		var out bytes.Buffer
		if err := filter(bytes.NewReader(line), &out, func(line []byte) any { return o.runLine(line) }); err != nil {
			return err
		}
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			return err
		}
		got := res.Filters
		if c.Golden.Custom {
			got = res.CustomFilters
		}
		if err := compareGolden(dir, c, res, got); err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", c.ID, err)
			continue
		}
		fmt.Printf("ok   %s (%d filters)\n", c.ID, len(got))
	}
	fmt.Printf("%d/%d golden cases match\n", checked-failed, checked)
	if failed > 0 {
		return fmt.Errorf("%d golden cases differ", failed)
	}
	return nil
}

func compareGolden(dir string, c Case, res Result, got []json.RawMessage) error {
	if res.Error != "" {
		return fmt.Errorf("error: %s", res.Error)
	}
	if len(got) != len(c.Golden.Want) {
		return fmt.Errorf("got %d filters, want %d", len(got), len(c.Golden.Want))
	}
	for i, g := range got {
		data, err := os.ReadFile(filepath.Join(dir, c.Golden.Want[i]))
		if err != nil {
			return err
		}
		var gotMsg, wantMsg proto.Message = &hcm.HttpFilter{}, &hcm.HttpFilter{}
		if c.TCP {
			gotMsg, wantMsg = &listener.Filter{}, &listener.Filter{}
		}
		if err := protojson.Unmarshal(g, gotMsg); err != nil {
			return fmt.Errorf("decoding our filter %d: %v", i, err)
		}
		if err := protomarshal.ApplyYAML(string(data), wantMsg); err != nil {
			return fmt.Errorf("%s: %v", c.Golden.Want[i], err)
		}
		// Not proto.Equal: typed_config is an Any whose bytes hold a map
		// (policies) in no fixed order. Compare the expanded JSON trees.
		if eq, err := sameJSON(gotMsg, wantMsg); err != nil || !eq {
			gy, _ := protomarshal.ToYAML(gotMsg)
			return fmt.Errorf("filter %d differs from %s; got:\n%s", i, c.Golden.Want[i], gy)
		}
	}
	return nil
}

func sameJSON(a, b proto.Message) (bool, error) {
	var trees [2]any
	for i, m := range []proto.Message{a, b} {
		j, err := protojson.Marshal(m)
		if err != nil {
			return false, err
		}
		if err := json.Unmarshal(j, &trees[i]); err != nil {
			return false, err
		}
	}
	return reflect.DeepEqual(trees[0], trees[1]), nil
}
