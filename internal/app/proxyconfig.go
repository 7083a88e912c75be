package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
)

// runProxyConfig prints what warden would send a proxy, computed from the
// configuration directory or, with --kubernetes, from the cluster (like
// istioctl proxy-config, without a live proxy). Secrets are described, never dumped: key material stays in the
// CA and the agent.
func runProxyConfig(ctx context.Context, e *env, args []string) error {
	var dir, node, generator, interception, format, trustDomain, servers, kubeconfig, kubeContext string
	var inCluster bool
	fs := e.flags("proxy-config")
	fs.StringVar(&dir, "config-dir", "", "the mesh configuration directory warden serve reads")
	fs.BoolVar(&inCluster, "kubernetes", false, "read the cluster warden serve --kubernetes watches instead of a directory")
	registerKubeconfig(fs, e, &kubeconfig, &kubeContext, "with --kubernetes: ")
	fs.StringVar(&node, "node", "", "node ID, sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local (required)")
	fs.StringVar(&generator, "generator", xds.GeneratorEnvoy, "envoy or grpc (proxyless gRPC)")
	fs.StringVar(&interception, "interception-mode", "REDIRECT", "an Envoy sidecar's iptables interception, REDIRECT or TPROXY (its metadata INTERCEPTION_MODE)")
	fs.StringVar(&servers, "grpc-server", "", "comma-separated addresses a proxyless gRPC server listens on (its server listeners)")
	fs.StringVar(&format, "o", "yaml", "yaml or json")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain")
	var mf meshPolicyFlags
	mf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := mf.check(); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want one of listeners, routes, clusters, endpoints, secrets, all", errUsage)
	}
	what := fs.Arg(0)
	if node == "" || (dir == "") == !inCluster {
		return fmt.Errorf("%w: --node and one of --config-dir or --kubernetes are required", errUsage)
	}
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return err
	}
	switch generator {
	case xds.GeneratorEnvoy, xds.GeneratorGRPC:
	default:
		return fmt.Errorf("%w: --generator %q: want envoy or grpc", errUsage, generator)
	}
	// The node as the proxy would send it, metadata and all: the same
	// parsing, and the same refusals, as warden serve's.
	md, err := structpb.NewStruct(map[string]any{"GENERATOR": generator, "INTERCEPTION_MODE": interception})
	if err != nil {
		return err
	}
	p, err := xds.ParseNode(&corev3.Node{Id: node, Metadata: md})
	if err != nil {
		return err
	}
	objs, services, warnings, err := proxyConfigSource(ctx, dir, kubeconfig, kubeContext)
	if err != nil {
		return err
	}
	mesh, err := xds.NewMesh(objs, services, xds.Options{TrustDomain: td, TrustDomainAliases: mf.aliases, PathNormalization: mf.pathNorm, RootNamespace: mf.rootNS, GatewayTrustedProxies: uint32(mf.trustedProxies)})
	if err != nil {
		return err
	}
	var names []string
	for _, a := range splitList(servers) {
		names = append(names, xds.ServerListenerName+a)
	}
	cfg, w, err := mesh.ProxyConfig(p, names)
	if err != nil {
		return err
	}
	out := map[string]any{}
	add := func(key string, rs []types.Resource) error {
		list := []json.RawMessage{}
		for _, r := range rs {
			b, err := protojson.Marshal(r)
			if err != nil {
				return err
			}
			list = append(list, b)
		}
		out[key] = list
		return nil
	}
	sets := map[string][]types.Resource{"listeners": cfg.Listeners, "routes": cfg.Routes, "clusters": cfg.Clusters, "endpoints": cfg.Endpoints}
	switch what {
	case "all":
		for k, rs := range sets {
			if err := add(k, rs); err != nil {
				return err
			}
		}
		out["secrets"] = secretsInfo(p, w, td)
	case "secrets":
		out["secrets"] = secretsInfo(p, w, td)
	default:
		rs, ok := sets[what]
		if !ok {
			return fmt.Errorf("%w: %q: want one of listeners, routes, clusters, endpoints, secrets, all", errUsage, what)
		}
		if err := add(what, rs); err != nil {
			return err
		}
	}
	dangling, err := cfg.Dangling()
	if err != nil {
		return err
	}
	warnings = append(warnings, cfg.Reports...)
	for _, d := range dangling {
		what := "the requests the CUSTOM policy selects are refused (403) unless the proxy's bootstrap defines it"
		if d.Filter == authn.JWTAuthnFilter {
			what = "tokens of that issuer are refused (401)"
		}
		warnings = append(warnings, fmt.Sprintf("%s names cluster %s for %s, which this proxy is not sent: %s", d.Filter, d.Cluster, d.What, what))
	}
	if len(warnings) > 0 {
		out["warnings"] = warnings
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if strings.EqualFold(format, "yaml") {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = e.stdout.Write(append(b, '\n'))
	return err
}

// proxyConfigSource reads the mesh: the directory, or the cluster when dir
// is empty (its Services first, ServiceEntries for other hosts, as
// warden serve --kubernetes merges them).
func proxyConfigSource(ctx context.Context, dir, kubeconfig, kubeContext string) (objs []api.Object, services []*xds.Service, warnings []string, err error) {
	if dir != "" {
		if objs, _, err = source.Load(dir); err != nil {
			return nil, nil, nil, err
		}
		services, err = xds.ServicesFromEntries(objs, "")
		return objs, services, nil, err
	}
	rc, err := kube.RESTConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, nil, nil, err
	}
	objs, cluster, rejected, err := meshconfig.Snapshot(ctx, rc, 30*time.Second)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, r := range rejected {
		warnings = append(warnings, "invalid object left out (warden serve leaves it out too): "+r)
	}
	services, shadowed, err := clusterServices(objs, cluster)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, h := range shadowed {
		warnings = append(warnings, fmt.Sprintf("ServiceEntry host %s ignored: a Kubernetes Service has that name", h))
	}
	return objs, services, warnings, nil
}

func secretsInfo(p *xds.Proxy, w *xds.Workload, td interface{ Name() string }) []map[string]string {
	if p.Generator == xds.GeneratorGRPC {
		return []map[string]string{{"note": "proxyless gRPC reads its certificates from the bootstrap's certificate provider (files written by warden agent --output-dir)"}}
	}
	id := "unknown workload: no secrets until the registry lists it"
	if w.Known {
		sa := w.ServiceAccount
		id = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", td.Name(), w.Namespace, sa)
	}
	return []map[string]string{
		{"name": "default", "type": "tls_certificate", "identity": id},
		{"name": "ROOTCA", "type": "validation_context", "content": "the mesh trust bundle"},
	}
}
