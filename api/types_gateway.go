package api

// Gateway (networking.istio.io/v1alpha3, v1beta1, v1) describes a load
// balancer at the mesh edge.
type Gateway struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta  `json:"metadata"`
	Spec     GatewaySpec `json:"spec,omitempty"`
}

// GatewaySpec lists servers.
type GatewaySpec struct {
	Servers  []Server          `json:"servers,omitempty"`
	Selector map[string]string `json:"selector,omitempty"`
}

// Server is one listening port of a Gateway.
type Server struct {
	Port            GatewayPort        `json:"port"`
	Bind            string             `json:"bind,omitempty"`
	Hosts           []string           `json:"hosts"`
	TLS             *ServerTLSSettings `json:"tls,omitempty"`
	DefaultEndpoint string             `json:"defaultEndpoint,omitempty"`
	Name            string             `json:"name,omitempty"`
}

// GatewayPort is a port of a Gateway server. The protocol is one Istio
// knows, in any case ("http" is HTTP).
type GatewayPort struct {
	Number     uint32 `json:"number"`
	Protocol   string `json:"protocol" enumfold:"HTTP,HTTPS,GRPC,GRPC-WEB,HTTP2,HTTP_PROXY,TCP,TLS,UDP,MONGO,REDIS,MYSQL"`
	Name       string `json:"name"`
	TargetPort uint32 `json:"targetPort,omitempty"`
}

// ServerTLSSettings is a Gateway server's TLS. Certificates come from one
// of credentialName, credentialNames or tlsCertificates (credentialName
// and tlsCertificates may be combined, as Istio's schema allows).
type ServerTLSSettings struct {
	HTTPSRedirect         bool                   `json:"httpsRedirect,omitempty"`
	Mode                  string                 `json:"mode,omitempty" enum:"PASSTHROUGH,SIMPLE,MUTUAL,AUTO_PASSTHROUGH,ISTIO_MUTUAL,OPTIONAL_MUTUAL"`
	ServerCertificate     string                 `json:"serverCertificate,omitempty"`
	PrivateKey            string                 `json:"privateKey,omitempty"`
	CACertificates        string                 `json:"caCertificates,omitempty"`
	CACrl                 string                 `json:"caCrl,omitempty"`
	CredentialName        string                 `json:"credentialName,omitempty" oneof:"names"`
	CredentialNames       []string               `json:"credentialNames,omitempty" oneof:"names,certificates"`
	TLSCertificates       []ServerTLSCertificate `json:"tlsCertificates,omitempty" oneof:"certificates"`
	CACertCredentialName  string                 `json:"caCertCredentialName,omitempty"`
	SubjectAltNames       []string               `json:"subjectAltNames,omitempty"`
	VerifyCertificateSpki []string               `json:"verifyCertificateSpki,omitempty"`
	VerifyCertificateHash []string               `json:"verifyCertificateHash,omitempty"`
	MinProtocolVersion    string                 `json:"minProtocolVersion,omitempty" enum:"TLS_AUTO,TLSV1_0,TLSV1_1,TLSV1_2,TLSV1_3"`
	MaxProtocolVersion    string                 `json:"maxProtocolVersion,omitempty" enum:"TLS_AUTO,TLSV1_0,TLSV1_1,TLSV1_2,TLSV1_3"`
	CipherSuites          []string               `json:"cipherSuites,omitempty"`
	InsecureSkipVerify    *bool                  `json:"insecureSkipVerify,omitempty"`
}

// ServerTLSCertificate is one certificate of a Gateway server.
type ServerTLSCertificate struct {
	ServerCertificate string `json:"serverCertificate,omitempty"`
	PrivateKey        string `json:"privateKey,omitempty"`
	CACertificates    string `json:"caCertificates,omitempty"`
}
