// Package authn compiles authentication policy for one workload: Istio's
// legacy Policy/MeshPolicy and modern PeerAuthentication and
// RequestAuthentication become the workload's effective mTLS mode per port
// and its trusted JWT issuers, then Envoy configuration: inbound filter
// chains with DownstreamTlsContext (SDS "default" + "ROOTCA"), the
// tls_inspector listener filter for PERMISSIVE ports, the client-side
// UpstreamTlsContext for ISTIO_MUTUAL, and an envoy.filters.http.jwt_authn
// filter.
//
// The package is a pure library: no Kubernetes or gRPC.
package authn

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Mode is a peer authentication (mTLS) mode.
type Mode string

// The modes. PERMISSIVE is the default when no policy says otherwise.
const (
	Strict     Mode = "STRICT"
	Permissive Mode = "PERMISSIVE"
	Disable    Mode = "DISABLE"
)

// Port is a port a workload serves.
type Port struct {
	Number uint32 `json:"number"`
	Name   string `json:"name,omitempty"`
}

// Workload is the proxy being configured.
type Workload struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []Port            `json:"ports,omitempty"`
	// ServiceNames are the short names of the Kubernetes Services
	// selecting the workload (legacy Policy targets name them).
	ServiceNames []string `json:"services,omitempty"`
}

// Options are mesh-wide settings.
type Options struct {
	RootNamespace string               // where mesh-wide PeerAuthentication lives (default istio-system)
	TrustDomain   spiffeid.TrustDomain // peers must present an ID in it (default cluster.local)
	SDSCluster    string               // cluster serving SDS to the proxy (default sds-grpc)
	// TrustDomainAliases are the mesh's other trust domains: inbound mTLS
	// accepts peers of the trust domain and of each alias.
	TrustDomainAliases []string
	// Keys resolves the keys of JWT rules that name only an issuer (OIDC
	// discovery); nil means none are known, and such issuers' tokens are
	// refused until they are.
	Keys KeySource
	// Hosts resolves the host of each jwksUri to the registry service
	// whose outbound cluster fetches its keys; nil (no registry known,
	// as in policy compile) takes hosts as written.
	Hosts HostResolver
}

// HostResolver finds the registry service a URL's host names, so that a
// cluster policy refers to is one the proxy has. xds implements it over
// the registry its clusters come from.
type HostResolver interface {
	// ResolveHost returns the hostname of the outbound cluster that
	// carries host:port (outbound|port||<hostname>). When no cluster of
	// the registry will, err says why and what to change, and hostname is
	// host as written (Istio's fallback).
	ResolveHost(host string, port uint32) (hostname string, err error)
}

// KeySource holds JWKS found by OIDC discovery. The control plane fetches
// them; the pure compiler only reads what is known.
type KeySource interface {
	// JWKS returns the issuer's key set (JSON), or why it is not known.
	JWKS(issuer string) (jwks string, err error)
}

func (o *Options) fill() {
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	if o.TrustDomain.IsZero() {
		o.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	}
	if o.SDSCluster == "" {
		o.SDSCluster = "sds-grpc"
	}
}

// PortSettings is the effective mTLS mode of one port and the policy that
// decided it.
type PortSettings struct {
	Port   uint32 `json:"port"`
	Mode   Mode   `json:"mode"`
	Source string `json:"source"`
}

// JWTRule is a trusted JWT issuer, from RequestAuthentication or a legacy
// origin.
type JWTRule struct {
	Issuer                string
	Audiences             []string
	JwksURI               string
	Jwks                  string
	FromHeaders           []Header
	FromParams            []string
	FromCookies           []string
	OutputPayloadToHeader string
	OutputClaimToHeaders  []ClaimHeader // claim -> header, replacing what the client sent
	ForwardOriginalToken  bool
	Timeout               time.Duration // remote JWKS fetch timeout (default 5s)
	SpaceDelimitedClaims  []string      // besides scope and permission
	// Required: a request needs a valid token (legacy originIsOptional
	// false); otherwise a request without one passes (authorization
	// decides) but an invalid one is refused.
	Required     bool
	IncludePaths []PathMatch // legacy trigger rules: only these paths need the JWT
	ExcludePaths []PathMatch // legacy trigger rules: these paths never do
	Source       string
}

// Header is a header a JWT may be carried in.
type Header struct{ Name, Prefix string }

// ClaimHeader copies a verified claim into a request header.
type ClaimHeader struct{ Claim, Header string }

// PathMatch matches a request path.
type PathMatch struct{ Exact, Prefix, Suffix, Regex string }

// Settings is a workload's effective authentication.
type Settings struct {
	Workload         Workload
	Mode             Mode // for ports without a port-level override
	ModeSource       string
	Ports            []PortSettings // one per workload port
	JWT              []JWTRule
	PrincipalBinding string   // legacy USE_PEER (default) or USE_ORIGIN
	Conflicts        []string // resolved deterministically, reported
}

// IsHTTP infers a port's protocol from its name as Istio does (http,
// http2, grpc, grpc-web, and those followed by "-"); the rest is TCP.
func IsHTTP(p Port) bool {
	proto, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	switch proto {
	case "http", "http2", "grpc", "h2c":
		return true
	}
	return false
}

// port is w's port with that number (a bare number when w has none).
func (w Workload) port(n uint32) Port {
	for _, p := range w.Ports {
		if p.Number == n {
			return p
		}
	}
	return Port{Number: n}
}

func sortedPorts(ps []Port) []Port {
	out := append([]Port(nil), ps...)
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out
}

func objName(ns, name string) string {
	if ns == "" {
		return name
	}
	return fmt.Sprintf("%s/%s", ns, name)
}
