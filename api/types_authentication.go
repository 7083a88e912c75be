package api

// Policy (authentication.istio.io/v1alpha1) sets peer and origin
// authentication for a namespace ("default") or for target services.
type Policy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     PolicySpec `json:"spec,omitempty"`
}

// MeshPolicy (authentication.istio.io/v1alpha1, cluster-scoped) is the
// mesh-wide Policy; it must be named "default".
type MeshPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     PolicySpec `json:"spec,omitempty"`
}

// PolicySpec is the legacy authentication policy (Istio 1.4's
// istio.authentication.v1alpha1.Policy).
type PolicySpec struct {
	Targets          []TargetSelector `json:"targets,omitempty"`
	Peers            []PeerMethod     `json:"peers,omitempty"`
	PeerIsOptional   bool             `json:"peerIsOptional,omitempty"`
	Origins          []OriginMethod   `json:"origins,omitempty"`
	OriginIsOptional bool             `json:"originIsOptional,omitempty"`
	PrincipalBinding string           `json:"principalBinding,omitempty" enum:"USE_PEER,USE_ORIGIN"`
}

// TargetSelector names a service (and optionally ports) a Policy applies to.
type TargetSelector struct {
	Name   string              `json:"name"`
	Ports  []AuthnPortSelector `json:"ports,omitempty"`
	Labels map[string]string   `json:"labels,omitempty"`
}

// AuthnPortSelector is a port by number or by name.
type AuthnPortSelector struct {
	Number uint32 `json:"number,omitempty" oneof:"port"`
	Name   string `json:"name,omitempty" oneof:"port"`
}

// PeerMethod is one way a peer may authenticate.
type PeerMethod struct {
	// MTLS is set by `- mtls:` with no value too: Istio 1.x read that
	// form, the one its documentation shows, as STRICT mutual TLS.
	MTLS *MutualTLS `json:"mtls,omitempty" oneof:"params" null:"set"`
	JWT  *JWT       `json:"jwt,omitempty" oneof:"params"`
}

// MutualTLS is the legacy mTLS setting; an empty object means STRICT.
type MutualTLS struct {
	AllowTLS bool   `json:"allowTls,omitempty"`
	Mode     string `json:"mode,omitempty" enum:"STRICT,PERMISSIVE"`
}

// OriginMethod authenticates the request's origin (end user).
type OriginMethod struct {
	JWT *JWT `json:"jwt,omitempty"`
}

// JWT is the legacy JWT configuration.
type JWT struct {
	Issuer       string           `json:"issuer,omitempty"`
	Audiences    []string         `json:"audiences,omitempty"`
	JwksURI      string           `json:"jwksUri,omitempty"`
	Jwks         string           `json:"jwks,omitempty"`
	JwtHeaders   []string         `json:"jwtHeaders,omitempty"`
	JwtParams    []string         `json:"jwtParams,omitempty"`
	TriggerRules []JWTTriggerRule `json:"triggerRules,omitempty"`
}

// JWTTriggerRule decides by path whether a JWT is checked.
type JWTTriggerRule struct {
	ExcludedPaths []AuthnStringMatch `json:"excludedPaths,omitempty"`
	IncludedPaths []AuthnStringMatch `json:"includedPaths,omitempty"`
}

// AuthnStringMatch matches a string exactly, by prefix, suffix or regex.
type AuthnStringMatch struct {
	Exact  string `json:"exact,omitempty" oneof:"match"`
	Prefix string `json:"prefix,omitempty" oneof:"match"`
	Suffix string `json:"suffix,omitempty" oneof:"match"`
	Regex  string `json:"regex,omitempty" oneof:"match" format:"regex"`
}
