package api

import "fmt"

// VirtualService (networking.istio.io/v1alpha3, v1beta1, v1) routes
// traffic for hosts. The networking types follow istio.io/api's
// networking/v1 schema, field for field.
type VirtualService struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta         `json:"metadata"`
	Spec     VirtualServiceSpec `json:"spec,omitempty"`
}

// VirtualServiceSpec holds the routes.
type VirtualServiceSpec struct {
	Hosts    []string    `json:"hosts,omitempty"`
	Gateways []string    `json:"gateways,omitempty"`
	HTTP     []HTTPRoute `json:"http,omitempty"`
	TLS      []TLSRoute  `json:"tls,omitempty"`
	TCP      []TCPRoute  `json:"tcp,omitempty"`
	ExportTo []string    `json:"exportTo,omitempty"`
}

// HTTPRoute is one HTTP routing rule.
type HTTPRoute struct {
	Name           string                 `json:"name,omitempty"`
	Match          []HTTPMatchRequest     `json:"match,omitempty"`
	Route          []HTTPRouteDestination `json:"route,omitempty"`
	Redirect       *HTTPRedirect          `json:"redirect,omitempty"`
	DirectResponse *HTTPDirectResponse    `json:"directResponse,omitempty"`
	Delegate       *Delegate              `json:"delegate,omitempty"`
	Rewrite        *HTTPRewrite           `json:"rewrite,omitempty"`
	Timeout        string                 `json:"timeout,omitempty" format:"duration"`
	Retries        *HTTPRetry             `json:"retries,omitempty"`
	Fault          *HTTPFaultInjection    `json:"fault,omitempty"`
	Mirror         *Destination           `json:"mirror,omitempty"`
	Mirrors        []HTTPMirrorPolicy     `json:"mirrors,omitempty"`
	// MirrorPercent is deprecated in favour of MirrorPercentage; Istio
	// also accepts it spelled mirror_percent.
	MirrorPercent    *uint32     `json:"mirrorPercent,omitempty" alias:"mirror_percent"`
	MirrorPercentage *Percent    `json:"mirrorPercentage,omitempty"`
	CorsPolicy       *CorsPolicy `json:"corsPolicy,omitempty"`
	Headers          *Headers    `json:"headers,omitempty"`
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
	StatPrefix      string                 `json:"statPrefix,omitempty"`
}

// StringMatch matches exactly, by prefix or by RE2 regex.
type StringMatch struct {
	Exact  string `json:"exact,omitempty" oneof:"match"`
	Prefix string `json:"prefix,omitempty" oneof:"match"`
	Regex  string `json:"regex,omitempty" oneof:"match" format:"regex"`
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

// PortSelector is a port by number.
type PortSelector struct {
	Number uint32 `json:"number,omitempty"`
}

// HTTPRedirect answers with a redirect.
type HTTPRedirect struct {
	URI           string `json:"uri,omitempty"`
	Authority     string `json:"authority,omitempty"`
	Port          uint32 `json:"port,omitempty" oneof:"port"`
	DerivePort    string `json:"derivePort,omitempty" enum:"FROM_PROTOCOL_DEFAULT,FROM_REQUEST_PORT" oneof:"port"`
	Scheme        string `json:"scheme,omitempty"`
	RedirectCode  uint32 `json:"redirectCode,omitempty"`
	PrefixRewrite string `json:"prefixRewrite,omitempty"`
}

// HTTPDirectResponse answers without forwarding.
type HTTPDirectResponse struct {
	Status uint32    `json:"status"`
	Body   *HTTPBody `json:"body,omitempty"`
}

// HTTPBody is a response body as text or base64 bytes.
type HTTPBody struct {
	String string `json:"string,omitempty" oneof:"specifier"`
	Bytes  string `json:"bytes,omitempty" format:"byte" oneof:"specifier"`
}

// Delegate hands routing to another VirtualService.
type Delegate struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// HTTPRewrite rewrites the path or authority.
type HTTPRewrite struct {
	URI             string        `json:"uri,omitempty"`
	Authority       string        `json:"authority,omitempty"`
	URIRegexRewrite *RegexRewrite `json:"uriRegexRewrite,omitempty"`
}

// RegexRewrite replaces what an RE2 regex matches.
type RegexRewrite struct {
	Match   string `json:"match,omitempty" format:"regex"`
	Rewrite string `json:"rewrite,omitempty"`
}

// HTTPRetry is the retry policy.
type HTTPRetry struct {
	Attempts                 int32  `json:"attempts,omitempty"`
	PerTryTimeout            string `json:"perTryTimeout,omitempty" format:"duration"`
	RetryOn                  string `json:"retryOn,omitempty"`
	RetryRemoteLocalities    *bool  `json:"retryRemoteLocalities,omitempty"`
	RetryIgnorePreviousHosts *bool  `json:"retryIgnorePreviousHosts,omitempty"`
	Backoff                  string `json:"backoff,omitempty" format:"duration"`
}

// HTTPFaultInjection delays or aborts requests.
type HTTPFaultInjection struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay delays a percentage of requests.
type FaultDelay struct {
	FixedDelay       string   `json:"fixedDelay,omitempty" format:"duration" oneof:"delay"`
	ExponentialDelay string   `json:"exponentialDelay,omitempty" format:"duration" oneof:"delay"`
	Percentage       *Percent `json:"percentage,omitempty"`
	Percent          int32    `json:"percent,omitempty"`
}

// FaultAbort aborts a percentage of requests.
type FaultAbort struct {
	HTTPStatus int32    `json:"httpStatus,omitempty" oneof:"error"`
	GRPCStatus string   `json:"grpcStatus,omitempty" oneof:"error"`
	HTTP2Error string   `json:"http2Error,omitempty" oneof:"error"`
	Percentage *Percent `json:"percentage,omitempty"`
}

// HTTPMirrorPolicy mirrors a percentage of requests to a destination.
type HTTPMirrorPolicy struct {
	Destination Destination `json:"destination"`
	Percentage  *Percent    `json:"percentage,omitempty"`
}

// Percent is a percentage, 0 to 100.
type Percent struct {
	Value float64 `json:"value,omitempty"`
}

func (p *Percent) check() error {
	if p.Value < 0 || p.Value > 100 {
		return &fieldError{"value", fmt.Sprintf("%g is not a percentage between 0 and 100", p.Value)}
	}
	return nil
}

// CorsPolicy is the CORS policy.
type CorsPolicy struct {
	// AllowOrigin is deprecated in favour of AllowOrigins.
	AllowOrigin         []string      `json:"allowOrigin,omitempty"`
	AllowOrigins        []StringMatch `json:"allowOrigins,omitempty"`
	AllowMethods        []string      `json:"allowMethods,omitempty"`
	AllowHeaders        []string      `json:"allowHeaders,omitempty"`
	ExposeHeaders       []string      `json:"exposeHeaders,omitempty"`
	MaxAge              string        `json:"maxAge,omitempty" format:"duration"`
	AllowCredentials    *bool         `json:"allowCredentials,omitempty"`
	UnmatchedPreflights string        `json:"unmatchedPreflights,omitempty" enum:"UNSPECIFIED,FORWARD,IGNORE"`
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

// TLSRoute routes TLS traffic by SNI.
type TLSRoute struct {
	Match []TLSMatchAttributes `json:"match"`
	Route []RouteDestination   `json:"route,omitempty"`
}

// TLSMatchAttributes matches TLS connections.
type TLSMatchAttributes struct {
	SniHosts           []string          `json:"sniHosts"`
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
	SourceNamespace    string            `json:"sourceNamespace,omitempty"`
}

// TCPRoute routes TCP traffic.
type TCPRoute struct {
	Match []L4MatchAttributes `json:"match,omitempty"`
	Route []RouteDestination  `json:"route,omitempty"`
}

// L4MatchAttributes matches TCP connections.
type L4MatchAttributes struct {
	DestinationSubnets []string          `json:"destinationSubnets,omitempty"`
	Port               uint32            `json:"port,omitempty"`
	SourceSubnet       string            `json:"sourceSubnet,omitempty"`
	SourceLabels       map[string]string `json:"sourceLabels,omitempty"`
	Gateways           []string          `json:"gateways,omitempty"`
	SourceNamespace    string            `json:"sourceNamespace,omitempty"`
}

// RouteDestination is a weighted L4 destination.
type RouteDestination struct {
	Destination Destination `json:"destination"`
	Weight      int32       `json:"weight,omitempty"`
}
