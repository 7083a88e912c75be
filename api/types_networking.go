package api

// VirtualService (networking.istio.io/v1alpha3, v1beta1, v1) routes
// traffic for hosts.
type VirtualService struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta         `json:"metadata"`
	Spec     VirtualServiceSpec `json:"spec"`
}

// VirtualServiceSpec holds the routes.
type VirtualServiceSpec struct {
	Hosts    []string    `json:"hosts,omitempty"`
	Gateways []string    `json:"gateways,omitempty"`
	HTTP     []HTTPRoute `json:"http,omitempty"`
	TCP      []TCPRoute  `json:"tcp,omitempty"`
	TLS      []TLSRoute  `json:"tls,omitempty"`
	ExportTo []string    `json:"exportTo,omitempty"`
}

// HTTPRoute is one HTTP routing rule.
type HTTPRoute struct {
	Name             string                 `json:"name,omitempty"`
	Match            []HTTPMatchRequest     `json:"match,omitempty"`
	Route            []HTTPRouteDestination `json:"route,omitempty"`
	Redirect         *HTTPRedirect          `json:"redirect,omitempty"`
	Rewrite          *HTTPRewrite           `json:"rewrite,omitempty"`
	Timeout          string                 `json:"timeout,omitempty" format:"duration"`
	Retries          *HTTPRetry             `json:"retries,omitempty"`
	Fault            *HTTPFaultInjection    `json:"fault,omitempty"`
	Mirror           *Destination           `json:"mirror,omitempty"`
	MirrorPercentage *Percent               `json:"mirrorPercentage,omitempty"`
	CorsPolicy       *CorsPolicy            `json:"corsPolicy,omitempty"`
	Headers          *Headers               `json:"headers,omitempty"`
}

// HTTPMatchRequest matches HTTP requests; fields are ANDed.
type HTTPMatchRequest struct {
	Name            string                 `json:"name,omitempty"`
	URI             *StringMatch           `json:"uri,omitempty"`
	Scheme          *StringMatch           `json:"scheme,omitempty"`
	Method          *StringMatch           `json:"method,omitempty"`
	Authority       *StringMatch           `json:"authority,omitempty"`
	Headers         map[string]StringMatch `json:"headers,omitempty"`
	Port            uint32                 `json:"port,omitempty"`
	SourceLabels    map[string]string      `json:"sourceLabels,omitempty"`
	Gateways        []string               `json:"gateways,omitempty"`
	QueryParams     map[string]StringMatch `json:"queryParams,omitempty"`
	IgnoreURICase   bool                   `json:"ignoreUriCase,omitempty"`
	WithoutHeaders  map[string]StringMatch `json:"withoutHeaders,omitempty"`
	SourceNamespace string                 `json:"sourceNamespace,omitempty"`
}

// StringMatch matches exactly, by prefix or by RE2 regex.
type StringMatch struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Regex  string `json:"regex,omitempty"`
}

// HTTPRouteDestination is a weighted destination.
type HTTPRouteDestination struct {
	Destination Destination `json:"destination"`
	Weight      int32       `json:"weight,omitempty"`
	Headers     *Headers    `json:"headers,omitempty"`
}

// Destination is a service host, subset and port.
type Destination struct {
	Host   string        `json:"host"`
	Subset string        `json:"subset,omitempty"`
	Port   *PortSelector `json:"port,omitempty"`
}

// HTTPRedirect answers with a redirect.
type HTTPRedirect struct {
	URI          string `json:"uri,omitempty"`
	Authority    string `json:"authority,omitempty"`
	RedirectCode uint32 `json:"redirectCode,omitempty"`
}

// HTTPRewrite rewrites the path or authority.
type HTTPRewrite struct {
	URI       string `json:"uri,omitempty"`
	Authority string `json:"authority,omitempty"`
}

// HTTPRetry is the retry policy.
type HTTPRetry struct {
	Attempts      int32  `json:"attempts,omitempty"`
	PerTryTimeout string `json:"perTryTimeout,omitempty" format:"duration"`
	RetryOn       string `json:"retryOn,omitempty"`
}

// HTTPFaultInjection delays or aborts requests.
type HTTPFaultInjection struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay delays a percentage of requests.
type FaultDelay struct {
	Percentage *Percent `json:"percentage,omitempty"`
	Percent    int32    `json:"percent,omitempty"`
	FixedDelay string   `json:"fixedDelay,omitempty" format:"duration"`
}

// FaultAbort aborts a percentage of requests.
type FaultAbort struct {
	Percentage *Percent `json:"percentage,omitempty"`
	HTTPStatus int32    `json:"httpStatus,omitempty"`
	GRPCStatus string   `json:"grpcStatus,omitempty"`
}

// Percent is a percentage, 0 to 100.
type Percent struct {
	Value float64 `json:"value"`
}

// CorsPolicy is the CORS policy.
type CorsPolicy struct {
	AllowOrigins     []StringMatch `json:"allowOrigins,omitempty"`
	AllowMethods     []string      `json:"allowMethods,omitempty"`
	AllowHeaders     []string      `json:"allowHeaders,omitempty"`
	ExposeHeaders    []string      `json:"exposeHeaders,omitempty"`
	MaxAge           string        `json:"maxAge,omitempty" format:"duration"`
	AllowCredentials bool          `json:"allowCredentials,omitempty"`
}

// Headers manipulates request and response headers.
type Headers struct {
	Request  *HeaderOperations `json:"request,omitempty"`
	Response *HeaderOperations `json:"response,omitempty"`
}

// HeaderOperations sets, adds or removes headers.
type HeaderOperations struct {
	Set    map[string]string `json:"set,omitempty"`
	Add    map[string]string `json:"add,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// TCPRoute routes TCP traffic.
type TCPRoute struct {
	Match []L4MatchAttributes `json:"match,omitempty"`
	Route []RouteDestination  `json:"route,omitempty"`
}

// TLSRoute routes TLS traffic by SNI.
type TLSRoute struct {
	Match []TLSMatchAttributes `json:"match"`
	Route []RouteDestination   `json:"route,omitempty"`
}

// L4MatchAttributes matches TCP connections.
type L4MatchAttributes struct {
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
}

// TLSMatchAttributes matches TLS connections.
type TLSMatchAttributes struct {
	SniHosts           []string          `json:"sniHosts"`
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
}

// RouteDestination is a weighted L4 destination.
type RouteDestination struct {
	Destination Destination `json:"destination"`
	Weight      int32       `json:"weight,omitempty"`
}

// DestinationRule (networking.istio.io) sets traffic policy and subsets
// for a host.
type DestinationRule struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta          `json:"metadata"`
	Spec     DestinationRuleSpec `json:"spec"`
}

// DestinationRuleSpec is the rule.
type DestinationRuleSpec struct {
	Host          string         `json:"host"`
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty"`
	Subsets       []Subset       `json:"subsets,omitempty"`
	ExportTo      []string       `json:"exportTo,omitempty"`
}

// TrafficPolicy is load balancing, connection pool, outlier detection and
// TLS.
type TrafficPolicy struct {
	LoadBalancer      *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool    *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection  *OutlierDetection       `json:"outlierDetection,omitempty"`
	TLS               *ClientTLSSettings      `json:"tls,omitempty"`
	PortLevelSettings []PortTrafficPolicy     `json:"portLevelSettings,omitempty"`
}

// PortTrafficPolicy is a traffic policy for one port.
type PortTrafficPolicy struct {
	Port             *PortSelector           `json:"port,omitempty"`
	LoadBalancer     *LoadBalancerSettings   `json:"loadBalancer,omitempty"`
	ConnectionPool   *ConnectionPoolSettings `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection       `json:"outlierDetection,omitempty"`
	TLS              *ClientTLSSettings      `json:"tls,omitempty"`
}

// LoadBalancerSettings picks the algorithm.
type LoadBalancerSettings struct {
	Simple         string          `json:"simple,omitempty" enum:"UNSPECIFIED,LEAST_CONN,RANDOM,PASSTHROUGH,ROUND_ROBIN,LEAST_REQUEST"`
	ConsistentHash *ConsistentHash `json:"consistentHash,omitempty"`
}

// ConsistentHash hashes requests to endpoints.
type ConsistentHash struct {
	HTTPHeaderName         string `json:"httpHeaderName,omitempty"`
	UseSourceIP            bool   `json:"useSourceIp,omitempty"`
	HTTPQueryParameterName string `json:"httpQueryParameterName,omitempty"`
	MinimumRingSize        uint64 `json:"minimumRingSize,omitempty"`
}

// ConnectionPoolSettings limits connections.
type ConnectionPoolSettings struct {
	TCP  *TCPSettings  `json:"tcp,omitempty"`
	HTTP *HTTPSettings `json:"http,omitempty"`
}

// TCPSettings are TCP connection limits.
type TCPSettings struct {
	MaxConnections int32  `json:"maxConnections,omitempty"`
	ConnectTimeout string `json:"connectTimeout,omitempty" format:"duration"`
}

// HTTPSettings are HTTP connection limits.
type HTTPSettings struct {
	HTTP1MaxPendingRequests  int32  `json:"http1MaxPendingRequests,omitempty"`
	HTTP2MaxRequests         int32  `json:"http2MaxRequests,omitempty"`
	MaxRequestsPerConnection int32  `json:"maxRequestsPerConnection,omitempty"`
	MaxRetries               int32  `json:"maxRetries,omitempty"`
	IdleTimeout              string `json:"idleTimeout,omitempty" format:"duration"`
}

// OutlierDetection ejects failing endpoints.
type OutlierDetection struct {
	ConsecutiveErrors    int32  `json:"consecutiveErrors,omitempty"`
	Consecutive5xxErrors uint32 `json:"consecutive5xxErrors,omitempty"`
	Interval             string `json:"interval,omitempty" format:"duration"`
	BaseEjectionTime     string `json:"baseEjectionTime,omitempty" format:"duration"`
	MaxEjectionPercent   int32  `json:"maxEjectionPercent,omitempty"`
	MinHealthPercent     int32  `json:"minHealthPercent,omitempty"`
}

// ClientTLSSettings is how a client connects upstream.
type ClientTLSSettings struct {
	Mode              string   `json:"mode,omitempty" enum:"DISABLE,SIMPLE,MUTUAL,ISTIO_MUTUAL"`
	ClientCertificate string   `json:"clientCertificate,omitempty"`
	PrivateKey        string   `json:"privateKey,omitempty"`
	CACertificates    string   `json:"caCertificates,omitempty"`
	CredentialName    string   `json:"credentialName,omitempty"`
	SubjectAltNames   []string `json:"subjectAltNames,omitempty"`
	SNI               string   `json:"sni,omitempty"`
}

// Subset is a named group of endpoints selected by labels.
type Subset struct {
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	TrafficPolicy *TrafficPolicy    `json:"trafficPolicy,omitempty"`
}

// Gateway (networking.istio.io) describes a load balancer at the mesh
// edge.
type Gateway struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta  `json:"metadata"`
	Spec     GatewaySpec `json:"spec"`
}

// GatewaySpec lists servers.
type GatewaySpec struct {
	Selector map[string]string `json:"selector,omitempty"`
	Servers  []Server          `json:"servers,omitempty"`
}

// Server is one listening port of a Gateway.
type Server struct {
	Port  GatewayPort        `json:"port"`
	Bind  string             `json:"bind,omitempty"`
	Hosts []string           `json:"hosts"`
	TLS   *ServerTLSSettings `json:"tls,omitempty"`
	Name  string             `json:"name,omitempty"`
}

// GatewayPort is a port of a Gateway server.
type GatewayPort struct {
	Number     uint32 `json:"number"`
	Protocol   string `json:"protocol" enum:"HTTP,HTTPS,GRPC,HTTP2,MONGO,TCP,TLS"`
	Name       string `json:"name"`
	TargetPort uint32 `json:"targetPort,omitempty"`
}

// ServerTLSSettings is a Gateway server's TLS.
type ServerTLSSettings struct {
	HTTPSRedirect      bool     `json:"httpsRedirect,omitempty"`
	Mode               string   `json:"mode,omitempty" enum:"PASSTHROUGH,SIMPLE,MUTUAL,AUTO_PASSTHROUGH,ISTIO_MUTUAL,OPTIONAL_MUTUAL"`
	ServerCertificate  string   `json:"serverCertificate,omitempty"`
	PrivateKey         string   `json:"privateKey,omitempty"`
	CACertificates     string   `json:"caCertificates,omitempty"`
	CredentialName     string   `json:"credentialName,omitempty"`
	SubjectAltNames    []string `json:"subjectAltNames,omitempty"`
	MinProtocolVersion string   `json:"minProtocolVersion,omitempty" enum:"TLS_AUTO,TLSV1_0,TLSV1_1,TLSV1_2,TLSV1_3"`
	MaxProtocolVersion string   `json:"maxProtocolVersion,omitempty" enum:"TLS_AUTO,TLSV1_0,TLSV1_1,TLSV1_2,TLSV1_3"`
}
