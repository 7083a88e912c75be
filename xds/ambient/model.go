// Package ambient compiles what ztunnel, the node proxy of Istio's
// ambient mode, receives over xDS: istio.workload.Address resources (a
// Workload per pod or ServiceEntry endpoint, a Service per Kubernetes
// Service or ServiceEntry host) and istio.security.Authorization
// resources (L4 authorization: AuthorizationPolicies and the
// PeerAuthentications ztunnel must enforce). It is a pure function of
// the registry and the configuration, as istiod's ambient index
// (pilot/pkg/serviceregistry/ambient) is a function of the same
// Kubernetes objects; xds/server serves the result.
package ambient

import (
	"time"

	"github.com/wardenmesh/warden/api"
)

// Type URLs of the resources ztunnel subscribes to.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// Labels and annotations Istio's ambient mode reads.
const (
	// RedirectionAnnotation is set by istio-cni on a pod whose traffic it
	// redirected to ztunnel: the pod then takes HBONE.
	RedirectionAnnotation = "ambient.istio.io/redirection"
	// UseWaypointLabel names the waypoint of a namespace, service or pod
	// ("none" opts out); UseWaypointNamespaceLabel the waypoint's
	// namespace when not the object's own.
	UseWaypointLabel          = "istio.io/use-waypoint"
	UseWaypointNamespaceLabel = "istio.io/use-waypoint-namespace"
	// DataplaneModeLabel enrolls a namespace or pod in ambient
	// ("ambient"), or opts a pod out ("none"). istio-cni acts on it; the
	// control plane sees its result in RedirectionAnnotation.
	DataplaneModeLabel = "istio.io/dataplane-mode"
	// WaypointHBONEPort is the port a waypoint takes HBONE on.
	WaypointHBONEPort = 15008
)

// Pod is what the compiler reads of a Kubernetes Pod.
type Pod struct {
	Name, Namespace string
	GenerateName    string
	Labels          map[string]string
	Annotations     map[string]string
	ServiceAccount  string // "" is "default"
	NodeName        string
	IPs             []string // status.podIPs (or podIP)
	Phase           string   // Pending, Running, Succeeded, Failed
	Ready           bool     // condition Ready is True
	Deleting        bool     // deletionTimestamp set
	HostNetwork     bool
	// ContainerPorts maps the named container ports to their numbers
	// (a Service's named targetPort).
	ContainerPorts map[string]uint32
	// Controller is the pod's controlling owner, if any.
	Controller *Owner
	Created    time.Time
}

// Owner is an owner reference.
type Owner struct {
	Kind, Name string
}

// Namespace is what the compiler reads of a Kubernetes Namespace.
type Namespace struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
}

// Service is what the compiler reads of a Kubernetes Service.
type Service struct {
	Name, Namespace string
	Labels          map[string]string
	Annotations     map[string]string
	// Selector selects the pods behind the service; nil for a service
	// without a selector, whose endpoints are named by its
	// EndpointSlices (Endpoints).
	Selector     map[string]string
	ExternalName bool
	ClusterIPs   []string // "None" for a headless service
	Ports        []ServicePort
	IPFamilies   []string // IPv4, IPv6
	// InternalTrafficPolicyLocal: spec.internalTrafficPolicy Local.
	InternalTrafficPolicyLocal bool
	PublishNotReadyAddresses   bool
	TrafficDistribution        string
	// Endpoints are the pods (by name, in the service's namespace) its
	// EndpointSlices point at; read for services without a selector.
	Endpoints []string
	Created   time.Time
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name           string
	Port           uint32
	Protocol       string // TCP, UDP, SCTP ("" is TCP)
	AppProtocol    string
	TargetPort     uint32 // numeric targetPort; 0 when named
	TargetPortName string // named targetPort
}

// Input is everything the compiler reads.
type Input struct {
	ClusterID     string // default Kubernetes
	Domain        string // cluster DNS domain, default cluster.local
	TrustDomain   string // default cluster.local
	RootNamespace string // default istio-system
	Network       string // the cluster's network; "" for a single network

	Namespaces []*Namespace
	Pods       []*Pod
	Services   []*Service
	// Config holds the configuration objects; the compiler reads
	// AuthorizationPolicy, PeerAuthentication and ServiceEntry.
	Config []api.Object
}

func (in *Input) fill() {
	if in.ClusterID == "" {
		in.ClusterID = "Kubernetes"
	}
	if in.Domain == "" {
		in.Domain = "cluster.local"
	}
	if in.TrustDomain == "" {
		in.TrustDomain = "cluster.local"
	}
	if in.RootNamespace == "" {
		in.RootNamespace = "istio-system"
	}
}
