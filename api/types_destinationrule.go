package api

// DestinationRule (networking.istio.io/v1alpha3, v1beta1, v1) sets traffic
// policy and subsets for a host.
type DestinationRule struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta          `json:"metadata"`
	Spec     DestinationRuleSpec `json:"spec,omitempty"`
}

// DestinationRuleSpec is the rule.
type DestinationRuleSpec struct {
	Host             string            `json:"host"`
	TrafficPolicy    *TrafficPolicy    `json:"trafficPolicy,omitempty"`
	Subsets          []Subset          `json:"subsets,omitempty"`
	ExportTo         []string          `json:"exportTo,omitempty"`
	WorkloadSelector *WorkloadSelector `json:"workloadSelector,omitempty"`
}

// TrafficPolicy is load balancing, connection pool, outlier detection, TLS
// and tunnelling for a host, a subset or (PortLevelSettings) a port.
type TrafficPolicy struct {
	LoadBalancer      *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool    *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection  *OutlierDetection       `json:"outlierDetection,omitempty"`
	TLS               *ClientTLSSettings      `json:"tls,omitempty"`
	PortLevelSettings []PortTrafficPolicy     `json:"portLevelSettings,omitempty"`
	Tunnel            *TunnelSettings         `json:"tunnel,omitempty"`
	ProxyProtocol     *ProxyProtocol          `json:"proxyProtocol,omitempty"`
	RetryBudget       *RetryBudget            `json:"retryBudget,omitempty"`
}

// PortTrafficPolicy is a traffic policy for one port.
type PortTrafficPolicy struct {
	Port             *PortSelector           `json:"port,omitempty"`
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty"`
	TLS              *ClientTLSSettings      `json:"tls,omitempty"`
}

// LoadBalancerSettings picks the algorithm: simple or consistentHash.
type LoadBalancerSettings struct {
	Simple             string                        `json:"simple,omitempty" enum:"UNSPECIFIED,LEAST_CONN,RANDOM,PASSTHROUGH,ROUND_ROBIN,LEAST_REQUEST" oneof:"lbPolicy"`
	ConsistentHash     *ConsistentHashLB             `json:"consistentHash,omitempty" oneof:"lbPolicy"`
	LocalityLbSetting  *LocalityLoadBalancerSetting  `json:"localityLbSetting,omitempty"`
	WarmupDurationSecs string                        `json:"warmupDurationSecs,omitempty" format:"duration"`
	Warmup             *WarmupConfiguration          `json:"warmup,omitempty"`
	ZoneAwareLbSetting *ZoneAwareLoadBalancerSetting `json:"zoneAwareLbSetting,omitempty"`
}

// ConsistentHashLB hashes requests to endpoints by one key, with one
// algorithm.
type ConsistentHashLB struct {
	HTTPHeaderName         string      `json:"httpHeaderName,omitempty" oneof:"hashKey"`
	HTTPCookie             *HTTPCookie `json:"httpCookie,omitempty" oneof:"hashKey"`
	UseSourceIP            bool        `json:"useSourceIp,omitempty" oneof:"hashKey"`
	HTTPQueryParameterName string      `json:"httpQueryParameterName,omitempty" oneof:"hashKey"`
	RingHash               *RingHash   `json:"ringHash,omitempty" oneof:"hashAlgorithm"`
	Maglev                 *MagLev     `json:"maglev,omitempty" oneof:"hashAlgorithm"`
	// MinimumRingSize is deprecated in favour of RingHash.
	MinimumRingSize uint64 `json:"minimumRingSize,omitempty"`
}

// HTTPCookie is the cookie a consistent hash uses (generated if absent).
type HTTPCookie struct {
	Name       string            `json:"name"`
	Path       string            `json:"path,omitempty"`
	TTL        string            `json:"ttl,omitempty" format:"duration"`
	Attributes []CookieAttribute `json:"attributes,omitempty"`
}

// CookieAttribute is one attribute of a generated cookie.
type CookieAttribute struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// RingHash is the ring hash algorithm.
type RingHash struct {
	MinimumRingSize uint64 `json:"minimumRingSize,omitempty"`
}

// MagLev is the Maglev algorithm.
type MagLev struct {
	TableSize uint64 `json:"tableSize,omitempty"`
}

// LocalityLoadBalancerSetting distributes or fails over traffic by
// locality.
type LocalityLoadBalancerSetting struct {
	Distribute       []LocalityDistribute `json:"distribute,omitempty"`
	Failover         []LocalityFailover   `json:"failover,omitempty"`
	FailoverPriority []string             `json:"failoverPriority,omitempty"`
	Enabled          *bool                `json:"enabled,omitempty"`
}

// LocalityDistribute sends traffic from one locality to others by weight.
type LocalityDistribute struct {
	From string            `json:"from,omitempty"`
	To   map[string]uint32 `json:"to,omitempty"`
}

// LocalityFailover names the region to fail over to.
type LocalityFailover struct {
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

// ZoneAwareLoadBalancerSetting prefers endpoints in the caller's zone.
type ZoneAwareLoadBalancerSetting struct {
	Enabled          *bool              `json:"enabled,omitempty"`
	Failover         []LocalityFailover `json:"failover,omitempty"`
	FailoverPriority []string           `json:"failoverPriority,omitempty"`
	MinClusterSize   *uint32            `json:"minClusterSize,omitempty"`
}

// WarmupConfiguration ramps traffic up to new endpoints.
type WarmupConfiguration struct {
	Duration       string   `json:"duration" format:"duration"`
	MinimumPercent *float64 `json:"minimumPercent,omitempty"`
	Aggression     *float64 `json:"aggression,omitempty"`
}

// ConnectionPoolSettings limits connections.
type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty"`
}

// TCPSettings are TCP connection limits.
type TCPSettings struct {
	MaxConnections        int32         `json:"maxConnections,omitempty"`
	ConnectTimeout        string        `json:"connectTimeout,omitempty" format:"duration"`
	TCPKeepalive          *TCPKeepalive `json:"tcpKeepalive,omitempty"`
	MaxConnectionDuration string        `json:"maxConnectionDuration,omitempty" format:"duration"`
	IdleTimeout           string        `json:"idleTimeout,omitempty" format:"duration"`
}

// TCPKeepalive sets SO_KEEPALIVE probes.
type TCPKeepalive struct {
	Probes   uint32 `json:"probes,omitempty"`
	Time     string `json:"time,omitempty" format:"duration"`
	Interval string `json:"interval,omitempty" format:"duration"`
}

// HTTPSettings are HTTP connection limits.
type HTTPSettings struct {
	HTTP1MaxPendingRequests  int32           `json:"http1MaxPendingRequests,omitempty"`
	HTTP2MaxRequests         int32           `json:"http2MaxRequests,omitempty"`
	MaxRequestsPerConnection int32           `json:"maxRequestsPerConnection,omitempty"`
	MaxRetries               int32           `json:"maxRetries,omitempty"`
	IdleTimeout              string          `json:"idleTimeout,omitempty" format:"duration"`
	H2UpgradePolicy          string          `json:"h2UpgradePolicy,omitempty" enum:"DEFAULT,DO_NOT_UPGRADE,UPGRADE"`
	UseClientProtocol        bool            `json:"useClientProtocol,omitempty"`
	MaxConcurrentStreams     int32           `json:"maxConcurrentStreams,omitempty"`
	HTTP2KeepAlive           *HTTP2KeepAlive `json:"http2KeepAlive,omitempty"`
}

// HTTP2KeepAlive sends HTTP/2 PINGs on idle connections.
type HTTP2KeepAlive struct {
	Interval string `json:"interval,omitempty" format:"duration"`
	Timeout  string `json:"timeout,omitempty" format:"duration"`
}

// OutlierDetection ejects failing endpoints. The *uint32 counts tell
// "unset" (Envoy's default) from 0 (this kind of ejection disabled).
type OutlierDetection struct {
	SplitExternalLocalOriginErrors bool     `json:"splitExternalLocalOriginErrors,omitempty"`
	ConsecutiveLocalOriginFailures *uint32  `json:"consecutiveLocalOriginFailures,omitempty"`
	ConsecutiveGatewayErrors       *uint32  `json:"consecutiveGatewayErrors,omitempty"`
	Consecutive5xxErrors           *uint32  `json:"consecutive5xxErrors,omitempty"`
	ConsecutiveErrors              int32    `json:"consecutiveErrors,omitempty"`
	Interval                       string   `json:"interval,omitempty" format:"duration"`
	BaseEjectionTime               string   `json:"baseEjectionTime,omitempty" format:"duration"`
	MaxEjectionPercent             int32    `json:"maxEjectionPercent,omitempty"`
	MinHealthPercent               int32    `json:"minHealthPercent,omitempty"`
	OutlierDetectionHTTPErrorCodes []uint32 `json:"outlierDetectionHttpErrorCodes,omitempty"`
}

// ClientTLSSettings is how a client connects upstream.
type ClientTLSSettings struct {
	Mode               string   `json:"mode,omitempty" enum:"DISABLE,SIMPLE,MUTUAL,ISTIO_MUTUAL"`
	ClientCertificate  string   `json:"clientCertificate,omitempty"`
	PrivateKey         string   `json:"privateKey,omitempty"`
	CACertificates     string   `json:"caCertificates,omitempty"`
	CredentialName     string   `json:"credentialName,omitempty"`
	SubjectAltNames    []string `json:"subjectAltNames,omitempty"`
	SNI                string   `json:"sni,omitempty"`
	InsecureSkipVerify *bool    `json:"insecureSkipVerify,omitempty"`
	CACrl              string   `json:"caCrl,omitempty"`
}

// TunnelSettings sends the connection through an HTTP CONNECT or POST
// tunnel.
type TunnelSettings struct {
	Protocol   string `json:"protocol,omitempty"`
	TargetHost string `json:"targetHost"`
	TargetPort uint32 `json:"targetPort"`
}

// ProxyProtocol sends a PROXY protocol header upstream.
type ProxyProtocol struct {
	Version string `json:"version,omitempty" enum:"V1,V2"`
}

// RetryBudget caps concurrent retries.
type RetryBudget struct {
	Percent             *float64 `json:"percent,omitempty"`
	MinRetryConcurrency uint32   `json:"minRetryConcurrency,omitempty"`
	BudgetInterval      string   `json:"budgetInterval,omitempty" format:"duration"`
}

// Subset is a named group of endpoints selected by labels.
type Subset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy,omitempty"`
}
