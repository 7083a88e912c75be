package api

// Policy (authentication.istio.io/v1alpha1) sets peer and origin
// authentication for a namespace ("default") or for target services.
type Policy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     PolicySpec `json:"spec"`
}

// MeshPolicy (authentication.istio.io/v1alpha1, cluster-scoped) is the
// mesh-wide Policy; it must be named "default".
type MeshPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta `json:"metadata"`
	Spec     PolicySpec `json:"spec"`
}

// PolicySpec is the legacy authentication policy.
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
	Name   string            `json:"name"`
	Ports  []PortSelector    `json:"ports,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// PortSelector is a port by number or by name.
type PortSelector struct {
	Number uint32 `json:"number,omitempty"`
	Name   string `json:"name,omitempty"`
}

// PeerMethod is one way a peer may authenticate.
type PeerMethod struct {
	MTLS *MutualTLS `json:"mtls,omitempty"`
	JWT  *JWT       `json:"jwt,omitempty"`
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
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Suffix string `json:"suffix,omitempty"`
	Regex  string `json:"regex,omitempty"`
}
