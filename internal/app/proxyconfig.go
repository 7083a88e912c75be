package app

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
)

// runProxyConfig prints what warden would send a proxy, computed from the
// configuration directory (like istioctl proxy-config, without a live
// proxy). Secrets are described, never dumped: key material stays in the
// CA and the agent.
func runProxyConfig(_ context.Context, e *env, args []string) error {
	var dir, node, generator, format, trustDomain, servers string
	fs := e.flags("proxy-config")
	fs.StringVar(&dir, "config-dir", "", "the mesh configuration directory warden serve reads (required)")
	fs.StringVar(&node, "node", "", "node ID, sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local (required)")
	fs.StringVar(&generator, "generator", xds.GeneratorEnvoy, "envoy or grpc (proxyless gRPC)")
	fs.StringVar(&servers, "grpc-server", "", "comma-separated addresses a proxyless gRPC server listens on (its server listeners)")
	fs.StringVar(&format, "o", "yaml", "yaml or json")
	fs.StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "SPIFFE trust domain")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want one of listeners, routes, clusters, endpoints, secrets, all", errUsage)
	}
	what := fs.Arg(0)
	if dir == "" || node == "" {
		return fmt.Errorf("%w: --config-dir and --node are required", errUsage)
	}
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return err
	}
	p, err := xds.ParseNodeID(node)
	if err != nil {
		return err
	}
	switch generator {
	case xds.GeneratorEnvoy, xds.GeneratorGRPC:
		p.Generator = generator
	default:
		return fmt.Errorf("%w: --generator %q: want envoy or grpc", errUsage, generator)
	}
	objs, _, err := source.Load(dir)
	if err != nil {
		return err
	}
	services, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		return err
	}
	mesh, err := xds.NewMesh(objs, services, xds.Options{TrustDomain: td})
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
	if len(cfg.Reports) > 0 {
		out["warnings"] = cfg.Reports
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
