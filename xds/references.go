package xds

import (
	"fmt"
	"sort"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	extauthznet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/rbac"
)

// Reference is a cluster a policy filter in a listener names: the
// cluster jwt_authn fetches an issuer's keys through (remote_jwks), or the
// one ext_authz calls for a CUSTOM provider.
type Reference struct {
	Cluster string
	Filter  string // authn.JWTAuthnFilter, rbac.ExtAuthz or rbac.NetworkExtAuthz
	// What names the referrer: `issuer "<iss>" (jwksUri <uri>)` or
	// `CUSTOM provider "<name>"`.
	What string
}

// References lists, once each in a stable order, the clusters the policy
// filters of c's listeners name. Routes and tcp_proxy are not policy:
// check's routing findings cover their destinations.
func (c *Config) References() ([]Reference, error) {
	seen := map[Reference]bool{}
	var out []Reference
	add := func(r Reference) {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	for _, r := range c.Listeners {
		l, ok := r.(*listenerv3.Listener)
		if !ok {
			continue
		}
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if err := filterReferences(f, add); err != nil {
					return nil, fmt.Errorf("xds: listener %s: %w", l.GetName(), err)
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Cluster < out[j].Cluster })
	return out, nil
}

func filterReferences(f *listenerv3.Filter, add func(Reference)) error {
	cfg := f.GetTypedConfig()
	if cfg == nil {
		return nil
	}
	switch {
	case cfg.MessageIs(&hcmv3.HttpConnectionManager{}):
		var h hcmv3.HttpConnectionManager
		if err := cfg.UnmarshalTo(&h); err != nil {
			return err
		}
		for _, hf := range h.GetHttpFilters() {
			if err := httpFilterReferences(hf.GetName(), hf.GetTypedConfig(), add); err != nil {
				return err
			}
		}
	case cfg.MessageIs(&extauthznet.ExtAuthz{}):
		var x extauthznet.ExtAuthz
		if err := cfg.UnmarshalTo(&x); err != nil {
			return err
		}
		if c := x.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "" {
			add(Reference{Cluster: c, Filter: rbac.NetworkExtAuthz, What: provider(c)})
		}
	}
	return nil
}

func httpFilterReferences(name string, cfg *anypb.Any, add func(Reference)) error {
	switch {
	case cfg == nil:
	case cfg.MessageIs(&jwtv3.JwtAuthentication{}):
		var j jwtv3.JwtAuthentication
		if err := cfg.UnmarshalTo(&j); err != nil {
			return err
		}
		names := make([]string, 0, len(j.GetProviders()))
		for n := range j.GetProviders() {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			p := j.GetProviders()[n]
			if u := p.GetRemoteJwks().GetHttpUri(); u.GetCluster() != "" {
				add(Reference{Cluster: u.GetCluster(), Filter: authn.JWTAuthnFilter, What: fmt.Sprintf("issuer %q (jwksUri %s)", p.GetIssuer(), u.GetUri())})
			}
		}
	case cfg.MessageIs(&extauthzv3.ExtAuthz{}):
		var x extauthzv3.ExtAuthz
		if err := cfg.UnmarshalTo(&x); err != nil {
			return err
		}
		if c := x.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "" {
			add(Reference{Cluster: c, Filter: rbac.ExtAuthz, What: provider(c)})
		}
		if c := x.GetHttpService().GetServerUri().GetCluster(); c != "" {
			add(Reference{Cluster: c, Filter: name, What: provider(c)})
		}
	}
	return nil
}

// provider names the CUSTOM provider behind an ext_authz cluster
// (rbac names it ext-authz|<provider>).
func provider(cluster string) string {
	if p, ok := strings.CutPrefix(cluster, rbac.ExtAuthzClusterPrefix); ok {
		return fmt.Sprintf("CUSTOM provider %q", p)
	}
	return fmt.Sprintf("external authorizer %s", cluster)
}

// Dangling is the References whose cluster is not among c's clusters:
// a remote_jwks one leaves Envoy without that issuer's keys (its tokens
// are refused, 401); an ext_authz one fails each call to the authorizer
// (the CUSTOM policy's requests are refused, 403) unless the proxy's
// bootstrap defines the cluster.
func (c *Config) Dangling() ([]Reference, error) {
	refs, err := c.References()
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(c.Clusters))
	for _, r := range c.Clusters {
		have[ResourceName(r)] = true
	}
	var out []Reference
	for _, r := range refs {
		if !have[r.Cluster] {
			out = append(out, r)
		}
	}
	return out, nil
}
