package api

// The rbac.istio.io/v1alpha1 kinds follow Istio 1.4's rbac.proto, the last
// release that served them.

// ServiceRole (rbac.istio.io/v1alpha1) is a set of permissions.
type ServiceRole struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta      `json:"metadata"`
	Spec     ServiceRoleSpec `json:"spec,omitempty"`
}

// ServiceRoleSpec lists access rules.
type ServiceRoleSpec struct {
	Rules []AccessRule `json:"rules,omitempty"`
}

// AccessRule is one permission of a ServiceRole.
type AccessRule struct {
	Services    []string               `json:"services,omitempty"`
	Hosts       []string               `json:"hosts,omitempty"`
	NotHosts    []string               `json:"notHosts,omitempty"`
	Paths       []string               `json:"paths,omitempty"`
	NotPaths    []string               `json:"notPaths,omitempty"`
	Methods     []string               `json:"methods,omitempty"`
	NotMethods  []string               `json:"notMethods,omitempty"`
	Ports       []int32                `json:"ports,omitempty"`
	NotPorts    []int32                `json:"notPorts,omitempty"`
	Constraints []AccessRuleConstraint `json:"constraints,omitempty"`
}

// AccessRuleConstraint is a key/values condition of an AccessRule.
type AccessRuleConstraint struct {
	Key    string   `json:"key"`
	Values []string `json:"values,omitempty"`
}

// ServiceRoleBinding (rbac.istio.io/v1alpha1) grants a ServiceRole to
// subjects.
type ServiceRoleBinding struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta             `json:"metadata"`
	Spec     ServiceRoleBindingSpec `json:"spec,omitempty"`
}

// ServiceRoleBindingSpec binds subjects to a role: a ServiceRole named by
// roleRef or role ("/name" for the root namespace), or inline actions.
type ServiceRoleBindingSpec struct {
	Subjects []Subject    `json:"subjects,omitempty"`
	RoleRef  *RoleRef     `json:"roleRef,omitempty"`
	Mode     string       `json:"mode,omitempty" enum:"ENFORCED,PERMISSIVE"`
	Actions  []AccessRule `json:"actions,omitempty"`
	Role     string       `json:"role,omitempty"`
}

// Subject is who a binding grants to.
type Subject struct {
	User          string            `json:"user,omitempty"`
	Names         []string          `json:"names,omitempty"`
	NotNames      []string          `json:"notNames,omitempty"`
	Group         string            `json:"group,omitempty"`
	Groups        []string          `json:"groups,omitempty"`
	NotGroups     []string          `json:"notGroups,omitempty"`
	Namespaces    []string          `json:"namespaces,omitempty"`
	NotNamespaces []string          `json:"notNamespaces,omitempty"`
	IPs           []string          `json:"ips,omitempty"`
	NotIPs        []string          `json:"notIps,omitempty"`
	Properties    map[string]string `json:"properties,omitempty"`
}

// RoleRef names the ServiceRole of a binding.
type RoleRef struct {
	Kind string `json:"kind" enum:"ServiceRole"`
	Name string `json:"name"`
}

// ClusterRbacConfig (rbac.istio.io/v1alpha1, cluster-scoped, named
// "default") turns RBAC on for the mesh or parts of it.
type ClusterRbacConfig struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta     `json:"metadata"`
	Spec     RbacConfigSpec `json:"spec,omitempty"`
}

// RbacConfig is the namespaced predecessor of ClusterRbacConfig.
type RbacConfig struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta     `json:"metadata"`
	Spec     RbacConfigSpec `json:"spec,omitempty"`
}

// RbacConfigSpec is the RBAC mode.
type RbacConfigSpec struct {
	Mode            string      `json:"mode,omitempty" enum:"OFF,ON,ON_WITH_INCLUSION,ON_WITH_EXCLUSION"`
	Inclusion       *RbacTarget `json:"inclusion,omitempty"`
	Exclusion       *RbacTarget `json:"exclusion,omitempty"`
	EnforcementMode string      `json:"enforcementMode,omitempty" enum:"ENFORCED,PERMISSIVE"`
}

// RbacTarget lists services and namespaces.
type RbacTarget struct {
	Services   []string `json:"services,omitempty"`
	Namespaces []string `json:"namespaces,omitempty"`
}
