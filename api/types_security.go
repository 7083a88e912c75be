package api

import (
	"errors"
	"fmt"
	"reflect"
)

// PeerAuthentication (security.istio.io/v1beta1, v1) sets the mTLS mode
// for workloads.
type PeerAuthentication struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta             `json:"metadata"`
	Spec     PeerAuthenticationSpec `json:"spec,omitempty"`
}

// PeerAuthenticationSpec selects workloads and their mTLS mode.
type PeerAuthenticationSpec struct {
	Selector      *WorkloadSelector   `json:"selector,omitempty"`
	MTLS          *PeerMTLS           `json:"mtls,omitempty"`
	PortLevelMTLS map[string]PeerMTLS `json:"portLevelMtls,omitempty" keys:"port"`
}

// PeerMTLS is an mTLS mode.
type PeerMTLS struct {
	Mode string `json:"mode,omitempty" enum:"UNSET,DISABLE,PERMISSIVE,STRICT"`
}

// RequestAuthentication (security.istio.io/v1beta1, v1) says which JWTs
// are accepted.
type RequestAuthentication struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta                `json:"metadata"`
	Spec     RequestAuthenticationSpec `json:"spec,omitempty"`
}

// RequestAuthenticationSpec lists JWT rules.
type RequestAuthenticationSpec struct {
	Selector   *WorkloadSelector       `json:"selector,omitempty" oneof:"target"`
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty" oneof:"target"`
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty" oneof:"target"`
	JWTRules   []JWTRule               `json:"jwtRules,omitempty"`
}

// JWTRule is one trusted JWT issuer. Istio also accepts jwksUri spelled
// jwks_uri; both decode into JwksURI.
type JWTRule struct {
	Issuer                string          `json:"issuer,omitempty"`
	Audiences             []string        `json:"audiences,omitempty"`
	JwksURI               string          `json:"jwksUri,omitempty" alias:"jwks_uri" oneof:"keys"`
	Jwks                  string          `json:"jwks,omitempty" oneof:"keys"`
	FromHeaders           []JWTHeader     `json:"fromHeaders,omitempty"`
	FromParams            []string        `json:"fromParams,omitempty"`
	FromCookies           []string        `json:"fromCookies,omitempty"`
	OutputPayloadToHeader string          `json:"outputPayloadToHeader,omitempty"`
	OutputClaimToHeaders  []ClaimToHeader `json:"outputClaimToHeaders,omitempty"`
	ForwardOriginalToken  bool            `json:"forwardOriginalToken,omitempty"`
	Timeout               string          `json:"timeout,omitempty" format:"duration"`
	SpaceDelimitedClaims  []string        `json:"spaceDelimitedClaims,omitempty"`
}

// JWTHeader is a header a JWT may come in, with its prefix.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

// ClaimToHeader copies a claim into a request header.
type ClaimToHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}

// AuthorizationPolicy (security.istio.io/v1beta1, v1) allows, denies or
// audits requests.
type AuthorizationPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta              `json:"metadata"`
	Spec     AuthorizationPolicySpec `json:"spec,omitempty"`
}

// AuthorizationPolicySpec is the policy.
type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector       `json:"selector,omitempty" oneof:"target"`
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty" oneof:"target"`
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty" oneof:"target"`
	Rules      []Rule                  `json:"rules,omitempty"`
	Action     string                  `json:"action,omitempty" enum:"ALLOW,DENY,AUDIT,CUSTOM"`
	Provider   *ExtensionProvider      `json:"provider,omitempty"`
}

// ExtensionProvider names a CUSTOM action's external authorizer.
type ExtensionProvider struct {
	Name string `json:"name,omitempty"`
}

// Rule matches requests: from, to and when are ANDed.
type Rule struct {
	From []RuleFrom  `json:"from,omitempty"`
	To   []RuleTo    `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// RuleFrom wraps a Source.
type RuleFrom struct {
	Source *Source `json:"source,omitempty"`
}

// Source is who sends the request.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	ServiceAccounts      []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts   []string `json:"notServiceAccounts,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
	TrustDomains         []string `json:"trustDomains,omitempty"`
	NotTrustDomains      []string `json:"notTrustDomains,omitempty"`
}

// check applies Istio's rule that serviceAccounts (which name a namespace
// and an account) cannot be combined with principals or namespaces.
func (s *Source) check() error {
	if len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 &&
		len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
		return errors.New("cannot set serviceAccounts with namespaces or principals")
	}
	if reflect.ValueOf(*s).IsZero() {
		// Istio refuses it: an empty source would match every caller.
		return errors.New("must not be empty (it would match every caller; leave out from instead)")
	}
	return nil
}

// check applies Istio's rule: a from entry has a source.
func (f *RuleFrom) check() error {
	if f.Source == nil {
		return &fieldError{"source", "is required (an empty from entry would match every caller)"}
	}
	return nil
}

// check applies Istio's rule: a to entry has a non-empty operation.
func (t *RuleTo) check() error {
	if t.Operation == nil || reflect.ValueOf(*t.Operation).IsZero() {
		return &fieldError{"operation", "must not be empty (it would match every request; leave out to instead)"}
	}
	return nil
}

// check applies Istio's rule: a condition has values or notValues.
func (c *Condition) check() error {
	if len(c.Values)+len(c.NotValues) == 0 {
		return fmt.Errorf("%s: at least one of values or notValues must be set", c.Key)
	}
	return nil
}

// RuleTo wraps an Operation.
type RuleTo struct {
	Operation *Operation `json:"operation,omitempty"`
}

// Operation is what the request does.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is a key with values (ORed) or notValues.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}
