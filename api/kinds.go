package api

import "reflect"

// TypeMeta is apiVersion and kind.
type TypeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// Object is any decoded resource.
type Object interface {
	// Type is the object's apiVersion and kind.
	Type() *TypeMeta
	// Meta is the object's metadata.
	Meta() *ObjectMeta
	// Validate checks the object's values as Decode does: metadata,
	// enums, durations, fields that exclude each other and the kind's
	// own rules. It is for objects built in Go; decoded ones passed it.
	Validate() error
}

// Type implements Object for every kind (promoted from the embedded field).
func (t *TypeMeta) Type() *TypeMeta { return t }

// Kind describes one resource kind warden reads: its CRD names and the
// Go type its objects decode into.
type Kind struct {
	Group      string
	Kind       string
	Plural     string
	ShortNames []string
	Versions   []string // served, oldest first
	Storage    string   // the version etcd stores
	Cluster    bool     // cluster-scoped
	Categories []string
	New        func() Object
}

// Kinds lists every kind, in one place (no registration side effects).
var Kinds = []Kind{
	{Group: "authentication.istio.io", Kind: "Policy", Plural: "policies", Versions: []string{"v1alpha1"}, Storage: "v1alpha1",
		Categories: []string{"istio-io", "authentication-istio-io"}, New: func() Object { return &Policy{} }},
	{Group: "authentication.istio.io", Kind: "MeshPolicy", Plural: "meshpolicies", Versions: []string{"v1alpha1"}, Storage: "v1alpha1", Cluster: true,
		Categories: []string{"istio-io", "authentication-istio-io"}, New: func() Object { return &MeshPolicy{} }},
	{Group: "rbac.istio.io", Kind: "ServiceRole", Plural: "serviceroles", Versions: []string{"v1alpha1"}, Storage: "v1alpha1",
		Categories: []string{"istio-io", "rbac-istio-io"}, New: func() Object { return &ServiceRole{} }},
	{Group: "rbac.istio.io", Kind: "ServiceRoleBinding", Plural: "servicerolebindings", Versions: []string{"v1alpha1"}, Storage: "v1alpha1",
		Categories: []string{"istio-io", "rbac-istio-io"}, New: func() Object { return &ServiceRoleBinding{} }},
	{Group: "rbac.istio.io", Kind: "ClusterRbacConfig", Plural: "clusterrbacconfigs", Versions: []string{"v1alpha1"}, Storage: "v1alpha1", Cluster: true,
		Categories: []string{"istio-io", "rbac-istio-io"}, New: func() Object { return &ClusterRbacConfig{} }},
	{Group: "rbac.istio.io", Kind: "RbacConfig", Plural: "rbacconfigs", Versions: []string{"v1alpha1"}, Storage: "v1alpha1",
		Categories: []string{"istio-io", "rbac-istio-io"}, New: func() Object { return &RbacConfig{} }},
	{Group: "security.istio.io", Kind: "PeerAuthentication", Plural: "peerauthentications", ShortNames: []string{"pa"}, Versions: []string{"v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "security-istio-io"}, New: func() Object { return &PeerAuthentication{} }},
	{Group: "security.istio.io", Kind: "RequestAuthentication", Plural: "requestauthentications", ShortNames: []string{"ra"}, Versions: []string{"v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "security-istio-io"}, New: func() Object { return &RequestAuthentication{} }},
	{Group: "security.istio.io", Kind: "AuthorizationPolicy", Plural: "authorizationpolicies", ShortNames: []string{"ap"}, Versions: []string{"v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "security-istio-io"}, New: func() Object { return &AuthorizationPolicy{} }},
	{Group: "networking.istio.io", Kind: "VirtualService", Plural: "virtualservices", ShortNames: []string{"vs"}, Versions: []string{"v1alpha3", "v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "networking-istio-io"}, New: func() Object { return &VirtualService{} }},
	{Group: "networking.istio.io", Kind: "DestinationRule", Plural: "destinationrules", ShortNames: []string{"dr"}, Versions: []string{"v1alpha3", "v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "networking-istio-io"}, New: func() Object { return &DestinationRule{} }},
	{Group: "networking.istio.io", Kind: "ServiceEntry", Plural: "serviceentries", ShortNames: []string{"se"}, Versions: []string{"v1alpha3", "v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "networking-istio-io"}, New: func() Object { return &ServiceEntry{} }},
	{Group: "networking.istio.io", Kind: "Gateway", Plural: "gateways", ShortNames: []string{"gw"}, Versions: []string{"v1alpha3", "v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "networking-istio-io"}, New: func() Object { return &Gateway{} }},
	{Group: "networking.istio.io", Kind: "Sidecar", Plural: "sidecars", Versions: []string{"v1alpha3", "v1beta1", "v1"}, Storage: "v1",
		Categories: []string{"istio-io", "networking-istio-io"}, New: func() Object { return &Sidecar{} }},
}

// kindOf finds the Kind of o by its Go type (Go-built objects may have no
// TypeMeta).
func kindOf(o Object) *Kind {
	t := reflect.TypeOf(o)
	for i := range Kinds {
		if reflect.TypeOf(Kinds[i].New()) == t {
			return &Kinds[i]
		}
	}
	return nil
}

// lookup finds the kind for apiVersion and kind.
func lookup(apiVersion, kind string) (*Kind, bool) {
	for i := range Kinds {
		k := &Kinds[i]
		if k.Kind != kind {
			continue
		}
		for _, v := range k.Versions {
			if apiVersion == k.Group+"/"+v {
				return k, true
			}
		}
	}
	return nil, false
}

// Meta implements Object.
func (o *Policy) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *Policy) Validate() error { return validate(o) }

// Meta implements Object.
func (o *MeshPolicy) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *MeshPolicy) Validate() error { return validate(o) }

// Meta implements Object.
func (o *ServiceRole) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *ServiceRole) Validate() error { return validate(o) }

// Meta implements Object.
func (o *ServiceRoleBinding) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *ServiceRoleBinding) Validate() error { return validate(o) }

// Meta implements Object.
func (o *ClusterRbacConfig) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *ClusterRbacConfig) Validate() error { return validate(o) }

// Meta implements Object.
func (o *RbacConfig) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *RbacConfig) Validate() error { return validate(o) }

// Meta implements Object.
func (o *PeerAuthentication) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *PeerAuthentication) Validate() error { return validate(o) }

// Meta implements Object.
func (o *RequestAuthentication) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *RequestAuthentication) Validate() error { return validate(o) }

// Meta implements Object.
func (o *AuthorizationPolicy) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *AuthorizationPolicy) Validate() error { return validate(o) }

// Meta implements Object.
func (o *VirtualService) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *VirtualService) Validate() error { return validate(o) }

// Meta implements Object.
func (o *DestinationRule) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *DestinationRule) Validate() error { return validate(o) }

// Meta implements Object.
func (o *Gateway) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *Gateway) Validate() error { return validate(o) }

// Meta implements Object.
func (o *ServiceEntry) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *ServiceEntry) Validate() error { return validate(o) }

// Meta implements Object.
func (o *Sidecar) Meta() *ObjectMeta { return &o.Metadata }

// Validate implements Object.
func (o *Sidecar) Validate() error { return validate(o) }
