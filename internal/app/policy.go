package app

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/rbac"
	"github.com/wardenmesh/warden/xds"
)

// readObjects reads policy files with serve --config-dir's loader; no
// object at all is an error (errNoObjects).
func readObjects(path string) ([]api.Object, error) {
	objs, _, err := source.Load(path)
	if err == nil && len(objs) == 0 {
		err = errNoObjects(path)
	}
	return objs, err
}

// parseLabels parses k=v,k2=v2.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range splitList(s) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: label %q is not key=value", errUsage, kv)
		}
		out[k] = v
	}
	return out, nil
}

// parsePorts parses 8080,9090 or http:8080.
func parsePorts(s string) ([]authn.Port, error) {
	var out []authn.Port
	for _, p := range splitList(s) {
		name, num, ok := strings.Cut(p, ":")
		if !ok {
			name, num = "", p
		}
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: port %q is not [name:]number", errUsage, p)
		}
		out = append(out, authn.Port{Number: uint32(n), Name: name})
	}
	return out, nil
}

type workloadFlags struct {
	file, ns, labels, ports, services, output, kind string
	trustDomain                                     string
	federationFile                                  string
	mesh                                            meshPolicyFlags
}

// meshPolicyFlags are the mesh-wide settings policy and routing depend on
// (Istio's meshConfig rootNamespace, trustDomainAliases and
// pathNormalization).
type meshPolicyFlags struct {
	aliases        multiFlag
	pathNorm       string
	rootNS         string
	trustedProxies uint
}

// register registers every mesh-wide setting (serve, proxy-config and
// the policy commands build listeners with all of them).
func (m *meshPolicyFlags) register(fs *flag.FlagSet) {
	m.registerPolicy(fs)
	fs.UintVar(&m.trustedProxies, "gateway-num-trusted-proxies", 0, "proxies (load balancers) in front of the gateways that append to X-Forwarded-For (Istio's meshConfig.defaultConfig.gatewayTopology.numTrustedProxies): a gateway takes the client address, remote.ip, that many hops from the right")
}

// registerPolicy registers the settings that change what a policy
// means (warden check's: its findings depend on no other).
func (m *meshPolicyFlags) registerPolicy(fs *flag.FlagSet) {
	fs.StringVar(&m.rootNS, "root-namespace", "istio-system", "the mesh root namespace (Istio's meshConfig rootNamespace): policies and Sidecars there apply mesh-wide")
	fs.Var(&m.aliases, "trust-domain-alias", "another trust domain of this mesh (Istio's trustDomainAliases; repeatable): a principal naming it, the trust domain or cluster.local matches peers of all of them")
	fs.StringVar(&m.pathNorm, "path-normalization", rbac.PathBase, "what inbound HTTP paths go through before authorization (Istio's meshConfig pathNormalization): "+strings.Join(rbac.PathNormalizations, ", "))
}

func (m *meshPolicyFlags) check() error {
	if m.rootNS == "" {
		return fmt.Errorf("%w: --root-namespace is empty", errUsage)
	}
	if m.trustedProxies > 64 {
		return fmt.Errorf("%w: --gateway-num-trusted-proxies %d: at most 64", errUsage, m.trustedProxies)
	}
	if err := rbac.CheckPathNormalization(m.pathNorm); err != nil {
		return fmt.Errorf("%w: --path-normalization: %v", errUsage, err)
	}
	for _, a := range m.aliases {
		if _, err := parseTrustDomain(a); err != nil {
			return fmt.Errorf("%w: --trust-domain-alias: %v", errUsage, err)
		}
	}
	return nil
}

// rbacOptions are the authorization compiler's options from the flags.
func (w *workloadFlags) rbacOptions(tcp bool) (rbac.Options, error) {
	td, err := parseTrustDomain(w.trustDomain)
	if err != nil {
		return rbac.Options{}, err
	}
	if err := w.mesh.check(); err != nil {
		return rbac.Options{}, err
	}
	_, federated, err := federatedTrustDomains(w.federationFile, td, true)
	if err != nil {
		return rbac.Options{}, err
	}
	return rbac.Options{RootNamespace: w.mesh.rootNS, TrustDomain: td, TrustDomainAliases: w.mesh.aliases, FederatedTrustDomains: federated,
		PathNormalization: w.mesh.pathNorm, TCP: tcp}, nil
}

func (e *env) policyFlags(name string, w *workloadFlags) *flag.FlagSet {
	fs := e.flags(name)
	fs.StringVar(&w.file, "f", "", "policy YAML file or directory (required)")
	fs.StringVar(&w.ns, "namespace", "default", "workload namespace")
	fs.StringVar(&w.labels, "labels", "", "workload labels k=v,k2=v2")
	fs.StringVar(&w.ports, "port", "8080", "workload ports, comma-separated, each [name:]number")
	fs.StringVar(&w.services, "services", "", "Services selecting the workload, by name or FQDN (legacy Policy targets, ServiceRole services)")
	fs.StringVar(&w.trustDomain, "trust-domain", defaultTrustDomain, "the mesh's SPIFFE trust domain")
	fs.StringVar(&w.federationFile, "federation-file", "", "serve's --federation-file, or the ClusterFederatedTrustDomain objects as kubectl get -o yaml writes them: the federated trust domains, which policies may name, and which namespaces' handshakes take their peers")
	w.mesh.register(fs)
	return fs
}

// load checks -f, parses the workload flags and reads the policy objects.
func (w *workloadFlags) load() (authn.Workload, []api.Object, error) {
	if w.file == "" {
		return authn.Workload{}, nil, fmt.Errorf("%w: -f is required", errUsage)
	}
	wl, err := w.workload()
	if err != nil {
		return authn.Workload{}, nil, err
	}
	objs, err := readObjects(w.file)
	return wl, objs, err
}

func (w *workloadFlags) workload() (authn.Workload, error) {
	labels, err := parseLabels(w.labels)
	if err != nil {
		return authn.Workload{}, err
	}
	ports, err := parsePorts(w.ports)
	if err != nil {
		return authn.Workload{}, err
	}
	var names []string
	for _, s := range splitList(w.services) {
		short, _, _ := strings.Cut(s, ".")
		names = append(names, short)
	}
	return authn.Workload{Namespace: w.ns, Labels: labels, Ports: ports, ServiceNames: names}, nil
}

func runPolicyCompile(_ context.Context, e *env, args []string) error {
	var w workloadFlags
	fs := e.policyFlags("policy compile", &w)
	fs.StringVar(&w.kind, "kind", "authn", "what to compile: authn or authz")
	fs.StringVar(&w.output, "o", "yaml", "output format: yaml or json")
	tcp := fs.Bool("tcp", false, "authz: compile the network (TCP) RBAC filter instead of the HTTP one")
	if err := parse(fs, args); err != nil {
		return err
	}
	wl, objs, err := w.load()
	if err != nil {
		return err
	}
	var out interface {
		YAML() ([]byte, error)
		JSON() ([]byte, error)
	}
	switch w.kind {
	case "authn":
		ix, err := authn.NewIndex(objs, authn.Options{RootNamespace: w.mesh.rootNS})
		if err != nil {
			return err
		}
		if out, err = ix.Compile(wl); err != nil {
			return err
		}
	case "authz":
		opts, err := w.rbacOptions(*tcp)
		if err != nil {
			return err
		}
		if out, err = rbac.Compile(objs, w.rbacWorkload(wl), opts); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: --kind %q: want authn or authz", errUsage, w.kind)
	}
	var b []byte
	switch w.output {
	case "yaml":
		b, err = out.YAML()
	case "json":
		b, err = out.JSON()
	default:
		return fmt.Errorf("%w: -o %q: want yaml or json", errUsage, w.output)
	}
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(b)
	return err
}

// rbacWorkload is the workload as authorization sees it: ServiceRole
// rules name services by FQDN, so a short --services name is completed in
// the workload's namespace.
func (w *workloadFlags) rbacWorkload(a authn.Workload) rbac.Workload {
	var fqdns []string
	for _, s := range splitList(w.services) {
		if !strings.Contains(s, ".") {
			s += "." + a.Namespace + ".svc.cluster.local"
		}
		fqdns = append(fqdns, s)
	}
	return rbac.Workload{Namespace: a.Namespace, Labels: a.Labels, ServiceFQDNs: fqdns}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// runPolicyExplain evaluates one request against the policy filters of
// the listener the proxy gets (xds.Mesh.Explain) and prints ALLOW or DENY
// with the deciding policy: a sidecar's inbound port (the default), a
// gateway's server (--gateway), or the proxy of a node the -f
// directory's registry knows (--node).
func runPolicyExplain(_ context.Context, e *env, args []string) error {
	var w workloadFlags
	fs := e.policyFlags("policy explain", &w)
	var r rbac.Request
	var headers, claims, servers multiFlag
	fs.StringVar(&r.Principal, "source-principal", "", "the caller's SPIFFE ID (empty: no mTLS)")
	fs.StringVar(&r.Method, "method", "GET", "HTTP method")
	fs.StringVar(&r.Path, "path", "/", "request path")
	fs.StringVar(&r.Host, "host", "", "Host/:authority")
	fs.StringVar(&r.SourceIP, "source-ip", "10.0.0.1", "the peer's address (the connection's, as source.ip sees it; remote.ip is derived from it and X-Forwarded-For as the listener's connection manager does)")
	fs.StringVar(&r.SNI, "sni", "", "TLS server name (selects a gateway's HTTPS or TLS server)")
	fs.Var(&headers, "header", "request header k=v (repeatable), e.g. --header x-forwarded-for=203.0.113.7")
	fs.Var(&claims, "jwt", "verified JWT claim claim=value (repeatable; a repeated claim becomes a list), e.g. --jwt iss=https://issuer --jwt sub=alice")
	tcp := fs.Bool("tcp", false, "the sidecar's ports are TCP: evaluate the network filters (no HTTP attributes)")
	gateway := fs.Bool("gateway", false, "the workload (--namespace, --labels) is a gateway: evaluate the server on --port of the Gateways in -f that select it")
	node := fs.String("node", "", "evaluate the proxy of this node ID (sidecar~IP~pod.ns~ns.svc.cluster.local or router~...), its workload from the ServiceEntries in -f")
	generator := fs.String("generator", xds.GeneratorEnvoy, "with --node: envoy or grpc (a proxyless gRPC server)")
	fs.Var(&servers, "server", "with --node --generator grpc: a server listener name the proxy asks for (repeatable; default: its IP and --port)")
	exitCode := fs.Bool("exit-code", false, "for scripts: exit 3 when the answer is DENY (0 for ALLOW)")
	if err := parse(fs, args); err != nil {
		return err
	}
	wl, objs, err := w.load()
	if err != nil {
		return err
	}
	r.Headers = map[string]string{}
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			return fmt.Errorf("%w: --header %q is not k=v", errUsage, h)
		}
		r.Headers[strings.ToLower(k)] = v
	}
	var payload map[string]any
	if len(claims) > 0 {
		payload = map[string]any{}
	}
	for _, c := range claims {
		k, v, ok := strings.Cut(c, "=")
		if !ok {
			return fmt.Errorf("%w: --jwt %q is not claim=value", errUsage, c)
		}
		switch old := payload[k].(type) {
		case nil:
			payload[k] = v
		case string:
			payload[k] = []string{old, v}
		case []string:
			payload[k] = append(old, v)
		}
	}
	opts, err := w.rbacOptions(*tcp)
	if err != nil {
		return err
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		return err
	}
	xopts := xds.Options{TrustDomain: opts.TrustDomain, TrustDomainAliases: w.mesh.aliases, FederatedTrustDomains: opts.FederatedTrustDomains, RootNamespace: w.mesh.rootNS,
		PathNormalization: w.mesh.pathNorm, GatewayTrustedProxies: uint32(w.mesh.trustedProxies)}
	if rels, _, err := federatedTrustDomains(w.federationFile, opts.TrustDomain, true); err != nil {
		return err
	} else if len(rels) > 0 {
		// The proxy of a federating namespace validates peers as serve
		// configures it, so the handshake's answer is the proxy's.
		if xopts.TrustBundles, err = newNamedBundles(rels); err != nil {
			return err
		}
	}
	mesh, err := xds.NewMesh(objs, services, xopts)
	if err != nil {
		return err
	}
	p, proxyWL, err := explainedProxy(mesh, w, wl, *node, *generator, *gateway, *tcp)
	if err != nil {
		return err
	}
	req := xds.ExplainRequest{Request: r, Claims: payload, Now: time.Now()}
	if len(wl.Ports) > 0 {
		req.Port = wl.Ports[0].Number
	}
	if p.Generator == xds.GeneratorGRPC && len(servers) == 0 {
		servers = multiFlag{fmt.Sprintf("%s%s:%d", xds.ServerListenerName, p.IP, req.Port)}
	}
	ex, err := mesh.Explain(p, proxyWL, servers, req)
	if err != nil {
		return err
	}
	if payload != nil && !strings.Contains(ex.Reason, "jwt_authn") && !hasJWTRule(mesh, proxyWL) {
		fmt.Fprintln(e.stdout, "note: no RequestAuthentication (or legacy origin) applies to this workload, so no token is verified; --jwt is ignored")
	}
	fmt.Fprintln(e.stdout, ex)
	if *exitCode && !ex.Allowed {
		return errDenied
	}
	return nil
}

// explainedProxy is the proxy policy explain evaluates and its workload.
func explainedProxy(mesh *xds.Mesh, w workloadFlags, wl authn.Workload, node, generator string, gateway, tcp bool) (*xds.Proxy, *xds.Workload, error) {
	if node != "" {
		if gateway {
			return nil, nil, fmt.Errorf("%w: --node names the proxy kind itself (router~... for a gateway); drop --gateway", errUsage)
		}
		p, err := xds.ParseNodeID(node)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: --node: %v", errUsage, err)
		}
		if generator != xds.GeneratorEnvoy && generator != xds.GeneratorGRPC {
			return nil, nil, fmt.Errorf("%w: --generator %q is not envoy or grpc", errUsage, generator)
		}
		p.Generator = generator
		pw := mesh.Workload(p)
		if !pw.Known {
			return nil, nil, fmt.Errorf("node %s: no ServiceEntry endpoint in -f %s has address %s in namespace %s, so its workload (labels, ports, service account) is unknown; add one, or describe the workload with --namespace, --labels and --port instead of --node", node, w.file, p.IP, p.Namespace)
		}
		return p, pw, nil
	}
	typ := xds.SidecarProxy
	if gateway {
		typ = xds.RouterProxy
	}
	id := fmt.Sprintf("%s~%s~explained.%s~%s.svc.cluster.local", typ, "127.0.0.1", wl.Namespace, wl.Namespace)
	p, err := xds.ParseNodeID(id)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: --namespace: %v", errUsage, err)
	}
	pw := &xds.Workload{Namespace: wl.Namespace, Labels: wl.Labels, Known: true, ServiceAccount: "explained"}
	for _, port := range wl.Ports {
		pw.Ports = append(pw.Ports, xds.WorkloadPort{Number: port.Number, Name: port.Name, HTTP: !tcp})
	}
	pw.Services = w.rbacWorkload(wl).ServiceFQDNs
	return p, pw, nil
}

// hasJWTRule says whether a RequestAuthentication (or legacy origin)
// applies to w.
func hasJWTRule(mesh *xds.Mesh, w *xds.Workload) bool {
	jwt, err := mesh.JWT(w)
	return err == nil && jwt != nil
}

// runPolicyMigrate converts legacy RBAC into AuthorizationPolicies.
func runPolicyMigrate(_ context.Context, e *env, args []string) error {
	fs := e.flags("policy migrate")
	file := fs.String("f", "", "legacy RBAC YAML file or directory (required)")
	var svc multiFlag
	fs.Var(&svc, "service-labels", "FQDN=k=v,k2=v2: the labels a Service selects (repeatable), for ServiceRole services")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: -f is required", errUsage)
	}
	labels := map[string]map[string]string{}
	for _, s := range svc {
		name, ls, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%w: --service-labels %q is not FQDN=k=v", errUsage, s)
		}
		m, err := parseLabels(ls)
		if err != nil {
			return err
		}
		labels[name] = m
	}
	objs, err := readObjects(*file)
	if err != nil {
		return err
	}
	aps, notes := rbac.Migrate(objs, labels)
	for _, ap := range aps {
		b, err := yaml.Marshal(ap)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "---\n%s", b)
	}
	for _, n := range notes {
		fmt.Fprintf(e.stderr, "policy migrate: %s\n", n)
	}
	return nil
}

// runPolicyCheck reads every file of -f and reports, in one run, every
// problem: each unreadable file and invalid or repeated object (errors:
// exit 1, as serve --config-dir refuses the directory), then for the
// workload its effective mode per port, trusted issuers and authentication
// conflicts, the authorization compiler's reports for every
// AuthorizationPolicy and for the workload's legacy RBAC, and the
// ServiceEntry fields the xDS compiler does not honour (warnings: exit 0
// unless --strict).
func runPolicyCheck(_ context.Context, e *env, args []string) error {
	var w workloadFlags
	fs := e.policyFlags("policy check", &w)
	strict := fs.Bool("strict", false, "exit 1 on warnings too (authentication conflicts, authorization reports, ServiceEntry fields not honoured)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if w.file == "" {
		return fmt.Errorf("%w: -f is required", errUsage)
	}
	wl, err := w.workload()
	if err != nil {
		return err
	}
	opts, err := w.rbacOptions(false)
	if err != nil {
		return err
	}
	l, err := source.LoadAll(w.file)
	if err != nil {
		return err
	}
	if len(l.Objects)+len(l.Problems) == 0 {
		return errNoObjects(w.file)
	}
	problems := l.Problems
	for _, p := range problems {
		fmt.Fprintf(e.stdout, "error: %v\n", p)
	}
	summary := fmt.Sprintf("%d objects valid", len(l.Objects))
	if len(problems) > 0 {
		summary += fmt.Sprintf(", %s (serve --config-dir refuses the directory until they are fixed)", count(len(problems), "problem"))
	}
	fmt.Fprintln(e.stdout, summary)
	warnings := 0
	// The authentication and authorization the valid objects give.
	var after []error
	if ix, err := authn.NewIndex(l.Objects, authn.Options{RootNamespace: w.mesh.rootNS}); err != nil {
		after = append(after, err)
	} else if s, err := ix.Effective(wl); err != nil {
		after = append(after, err)
	} else {
		for _, p := range s.Ports {
			fmt.Fprintf(e.stdout, "port %d: %s (%s)\n", p.Port, p.Mode, p.Source)
		}
		for _, j := range s.JWT {
			fmt.Fprintf(e.stdout, "jwt issuer %s (%s)\n", j.Issuer, j.Source)
		}
		for _, c := range s.Conflicts {
			fmt.Fprintf(e.stdout, "conflict: %s\n", c)
		}
		warnings += len(s.Conflicts)
		if _, err := ix.Compile(wl); err != nil {
			after = append(after, err)
		}
	}
	reports := rbac.Check(l.Objects, opts)
	if out, err := rbac.Compile(l.Objects, w.rbacWorkload(wl), opts); err != nil {
		after = append(after, err)
	} else {
		reports = append(reports, out.Reports...) // legacy RBAC's, for this workload
	}
	seen := map[string]bool{}
	for _, r := range reports {
		if !seen[r] {
			seen[r] = true
			fmt.Fprintf(e.stdout, "authz: %s\n", r)
		}
	}
	warnings += len(seen)
	// The ServiceEntry fields the xDS compiler reads but cannot honour.
	for _, o := range l.Objects {
		if se, ok := o.(*api.ServiceEntry); ok {
			for _, r := range xds.EntryReports(se) {
				fmt.Fprintf(e.stdout, "xds: %s\n", r)
				warnings++
			}
		}
	}
	for _, err := range after {
		fmt.Fprintf(e.stdout, "error: %v\n", err)
	}
	problems = append(problems, after...)
	switch {
	case len(problems) > 0:
		return fmt.Errorf("%s: %s", w.file, count(len(problems), "problem"))
	case *strict && warnings > 0:
		return fmt.Errorf("%s: %s (--strict)", w.file, count(warnings, "warning"))
	}
	return nil
}

// errNoObjects is the error of a policy command whose -f holds no
// configuration object: most likely a wrong path, which would otherwise
// read as a mesh without policy.
func errNoObjects(path string) error {
	return fmt.Errorf("%s holds no configuration object (policy commands read its *.yaml, *.yml and *.json files, not subdirectories): check the -f path", path)
}

// count is "1 problem", "2 problems".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
