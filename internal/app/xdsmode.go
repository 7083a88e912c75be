package app

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn/oidc"
	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/xds"
	"github.com/wardenmesh/warden/xds/ambient"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// The xDS server tells OIDC discovery which issuers each configuration
// names.
var _ xdsserver.IssuerSetter = (*oidc.Resolver)(nil)

// wireXDS makes the ADS server and feeds it the mesh configuration: the
// --config-dir directory in standalone mode, the informers in Kubernetes
// mode. Streams authenticate like certificate requests (SVID or token).
func (s *controlPlane) wireXDS(ctx context.Context, f serveFlags, td spiffeid.TrustDomain, identify xdsserver.Identify, cache *sds.Cache, roots func() []*x509.Certificate) (*xdsserver.Server, error) {
	keys := oidc.New(oidc.Config{Log: s.log})
	opts := xds.Options{TrustDomain: td, TrustDomainAliases: f.mesh.aliases, PathNormalization: f.mesh.pathNorm, RootNamespace: f.mesh.rootNS, JWTKeys: keys,
		GatewayTrustedProxies: uint32(f.mesh.trustedProxies)}
	if s.federated != nil {
		// Federating Envoy workloads validate peers with the SPIFFE
		// validator, the bundles inline (docs/federation.md).
		// Authorization's federated trust domains are those of the
		// relationships of the moment (xds.FederationNames).
		opts.TrustBundles = trustBundles{fed: s.federated, roots: roots}
	}
	lookup, access, credTask := s.gatewayCredentials(f)
	var creds xdsserver.Credentials
	if lookup != nil {
		creds = func(ns, name string) (*tlsv3.Secret, error) {
			return xds.CredentialSecret(name, func(secret string) (*xds.Secret, bool) { return lookup(ns, secret) })
		}
	}
	nodeAccounts, err := f.kube.xdsNodeAccounts()
	if err != nil {
		return nil, err
	}
	cfg := xdsserver.Config{
		TrustedNodeAccounts: nodeAccounts,
		ClusterID:           f.kube.clusterID, // --cluster-id: the CA's node authorization and ztunnel's workload uids name one cluster
		Options:             opts,
		Identify:            identify,
		Debounce:            f.debounce,
		Log:                 s.log,
		Secrets:             sds.ProxySecrets(cache, roots),
		Credentials:         creds,
		SecretAccess:        access,
	}
	if s.metrics != nil {
		cfg.Observer = s.metrics
	}
	srv, err := xdsserver.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.xds = srv
	if s.federated != nil {
		s.federated.Subscribe(srv.TrustBundlesChanged)
	}
	if credTask != nil {
		s.tasks = append(s.tasks, func(ctx context.Context) error { return credTask(ctx, srv) })
	}
	s.tasks = append(s.tasks, func(ctx context.Context) error { return keys.Run(ctx, srv.JWTKeysChanged) })
	switch {
	case s.config != nil:
		s.tasks = append(s.tasks, s.kubeFeed(srv))
	case f.configDir != "":
		dir := &source.Dir{Path: f.configDir, Log: s.log, OnChange: func(objs []api.Object) {
			services, err := xds.ServicesFromEntries(objs, "")
			if err != nil {
				s.log.Error("xds: configuration not applied", "dir", f.configDir, "error", err.Error())
				return
			}
			srv.Update(objs, services)
			s.setAmbient(srv, ambient.Input{Config: objs})
		}}
		s.configDir = dir
		objs, watch, err := dir.Start(ctx)
		if err != nil {
			return nil, err
		}
		services, err := xds.ServicesFromEntries(objs, "")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.configDir, err)
		}
		if err := srv.Apply(objs, services); err != nil {
			return nil, fmt.Errorf("%s: %w", f.configDir, err)
		}
		s.setAmbient(srv, ambient.Input{Config: objs})
		s.log.Info("mesh configuration loaded", "dir", f.configDir, "objects", len(objs), "services", len(services))
		s.tasks = append(s.tasks, watch)
	}
	return srv, nil
}

// trustBundles are the foreign bundles of a namespace (the federation
// relationships it is in) and the local bundle, for xDS.
type trustBundles struct {
	fed   *federation.Bundles
	roots func() []*x509.Certificate
}

var (
	_ xds.TrustBundles    = trustBundles{}
	_ xds.FederationNames = trustBundles{}
)

// FederatedTrustDomains are the trust domains of the relationships in
// effect, sorted.
func (b trustBundles) FederatedTrustDomains() []string {
	var names []string
	for _, st := range b.fed.Status() {
		names = append(names, st.TrustDomain.Name())
	}
	slices.Sort(names)
	return names
}

func (b trustBundles) ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate {
	return b.fed.ForNamespace(ns)
}

func (b trustBundles) LocalRoots() []*x509.Certificate { return b.roots() }

// kubeFeed feeds the ADS server in Kubernetes mode: once the mesh
// configuration and the service registry have listed, every change to
// either (coalesced: informer events come in bursts) rebuilds the service
// list, Kubernetes Services first and ServiceEntries for other hosts, and
// hands it to the server, which debounces the pushes.
func (s *controlPlane) kubeFeed(srv *xdsserver.Server) func(context.Context) error {
	kick := make(chan struct{}, 1)
	notify := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	s.config.OnChange = notify
	s.registry.OnChange = notify
	return func(ctx context.Context) error {
		for _, synced := range []<-chan struct{}{s.config.Synced(), s.registry.Synced()} {
			select {
			case <-synced:
			case <-ctx.Done():
				return nil
			}
		}
		notify()
		var lastShadowed, lastSummary string
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-kick:
			}
			objs := s.config.List()
			services, shadowed, err := clusterServices(objs, s.registry.Services())
			if err != nil {
				s.log.Error("xds: configuration not applied", "error", err.Error())
				continue
			}
			if msg := strings.Join(shadowed, ", "); msg != lastShadowed {
				lastShadowed = msg
				if msg != "" {
					s.log.Warn("xds: ServiceEntry hosts ignored: a Kubernetes Service has the same name", "hosts", msg)
				}
			}
			srv.Update(objs, services)
			pods, svcs, nss := s.registry.Ambient()
			s.setAmbient(srv, ambient.Input{Config: objs, Pods: pods, Services: svcs, Namespaces: nss})
			// Say what the configuration is when its objects change, not
			// on every endpoint change.
			rejected := s.config.Rejected()
			if summary := fmt.Sprint(len(objs), rejected); summary != lastSummary {
				lastSummary = summary
				s.log.Info("mesh configuration applied", "objects", len(objs), "services", len(services), "rejected", len(rejected))
				for _, r := range rejected {
					s.log.Warn("mesh configuration: invalid object left out", "object", r)
				}
			}
		}
	}
}

// setAmbient hands ztunnel's view of the mesh to the ADS server, which
// pushes what changed to every ztunnel at once (the feed coalesces
// bursts of informer events already).
func (s *controlPlane) setAmbient(srv *xdsserver.Server, in ambient.Input) {
	if err := srv.SetAmbient(in); err != nil {
		s.log.Error("xds: ztunnel configuration applied in part", "error", err.Error())
	}
}

// clusterServices is the registry in Kubernetes mode: the cluster's
// Services, then the ServiceEntries among objs for other hosts; shadowed
// lists the entry hosts a Service owns (xds.MergeServices).
func clusterServices(objs []api.Object, cluster []*xds.Service) (services []*xds.Service, shadowed []string, err error) {
	entries, err := xds.ServicesFromEntries(objs, "")
	if err != nil {
		return nil, nil, err
	}
	services, shadowed = xds.MergeServices(cluster, entries)
	return services, shadowed, nil
}

// gatewayCredentials is where Gateway credentialName Secrets come from:
// the API server in Kubernetes mode, --credentials-dir in standalone
// mode (nil: none), who may have them, and the task that pushes gateways
// when one changes.
func (s *controlPlane) gatewayCredentials(f serveFlags) (func(ns, name string) (*xds.Secret, bool), xds.SecretAccess, func(context.Context, *xdsserver.Server) error) {
	switch {
	case s.gwCreds != nil:
		return s.gwCreds.Lookup, s.gwCreds, func(ctx context.Context, srv *xdsserver.Server) error {
			s.gwCreds.OnChange = func(ns string) { srv.CredentialsChanged(ctx, ns) }
			return s.gwCreds.Run(ctx)
		}
	case f.credentialsDir != "":
		d := &source.CredentialsDir{Path: f.credentialsDir}
		return d.Lookup, d, func(ctx context.Context, srv *xdsserver.Server) error {
			return d.Watch(ctx, time.Second, func() { srv.CredentialsChanged(ctx, "") })
		}
	}
	return nil, nil, nil
}
