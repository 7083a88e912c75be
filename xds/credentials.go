package xds

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Keys of a credential Secret, as Istio reads them: a kubernetes.io/tls
// Secret's tls.crt, tls.key and ca.crt, or a generic Secret's cert, key
// and cacert.
var (
	certKeys = []string{"tls.crt", "cert"}
	keyKeys  = []string{"tls.key", "key"}
	caKeys   = []string{"ca.crt", "cacert"}
)

// Secret is a credential Secret as a lookup finds it.
type Secret struct {
	// Type is the Kubernetes Secret type ("" for a standalone
	// credentials directory, which holds TLS credentials only).
	Type string
	Data map[string][]byte
}

// SecretLookup finds a Secret by name in the gateway's namespace.
type SecretLookup func(name string) (*Secret, bool)

// credentialTypes are the Secret types a Gateway credential may have:
// kubernetes.io/tls, and a generic (Opaque) Secret with Istio's cert,
// key and cacert keys. Any other type holds something else (a registry
// password, a token, a workload's istio.io/key-and-cert identity) and is
// refused by name, even when its keys would parse (istiod does not look
// at the type).
var credentialTypes = map[string]bool{"": true, "Opaque": true, "kubernetes.io/tls": true}

func credentialType(sdsName, name string, s *Secret) error {
	if !credentialTypes[s.Type] {
		return fmt.Errorf("xds: gateway credential %s: Secret %s is of type %s, not a TLS credential (kubernetes.io/tls, or Opaque with cert and key)", sdsName, name, s.Type)
	}
	return nil
}

// CredentialSecret builds the SDS secret a gateway asked for by sdsName
// (kubernetes://<credentialName>, or kubernetes://<credentialName>-cacert
// for MUTUAL's CA certificates), as istiod does: the certificate and key
// of Secret <credentialName>; the CA certificates of Secret
// <credentialName>-cacert, else the ca.crt of Secret <credentialName>.
// The certificate must parse and match the key; errors name the Secret
// and the key, never the key's content.
func CredentialSecret(sdsName string, lookup SecretLookup) (*tlsv3.Secret, error) {
	name, ok := strings.CutPrefix(sdsName, CredentialPrefix)
	if !ok || name == "" {
		return nil, fmt.Errorf("xds: %q is not a gateway credential name (%s<Secret name>)", sdsName, CredentialPrefix)
	}
	if base, isCA := strings.CutSuffix(name, CACertSuffix); isCA {
		for _, n := range []string{name, base} {
			if sec, ok := lookup(n); ok {
				if err := credentialType(sdsName, n, sec); err != nil {
					return nil, err
				}
				return caSecret(sdsName, n, sec.Data)
			}
		}
		return nil, fmt.Errorf("xds: gateway credential %s: neither Secret %s nor Secret %s (key ca.crt) exists in the gateway's namespace", sdsName, name, base)
	}
	sec, ok := lookup(name)
	if !ok {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s does not exist in the gateway's namespace", sdsName, name)
	}
	if err := credentialType(sdsName, name, sec); err != nil {
		return nil, err
	}
	data := sec.Data
	certPEM, ck := first(data, certKeys)
	keyPEM, kk := first(data, keyKeys)
	if ck == "" || kk == "" {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s needs tls.crt and tls.key (or cert and key)", sdsName, name)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s: %s and %s are not a certificate and its key: %s", sdsName, name, ck, kk, sanitize(err))
	}
	if _, err := x509.ParseCertificate(pair.Certificate[0]); err != nil {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s: %s: %v", sdsName, name, ck, err)
	}
	return &tlsv3.Secret{Name: sdsName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(certPEM),
		PrivateKey:       inline(keyPEM),
	}}}, nil
}

func caSecret(sdsName, secret string, data map[string][]byte) (*tlsv3.Secret, error) {
	caPEM, k := first(data, caKeys)
	if k == "" {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s has no ca.crt (or cacert)", sdsName, secret)
	}
	n := 0
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return nil, fmt.Errorf("xds: gateway credential %s: Secret %s: %s: certificate %d: %v", sdsName, secret, k, n+1, err)
		}
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("xds: gateway credential %s: Secret %s: %s holds no PEM certificate", sdsName, secret, k)
	}
	return &tlsv3.Secret{Name: sdsName, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(caPEM)}}}, nil
}

func first(data map[string][]byte, keys []string) ([]byte, string) {
	for _, k := range keys {
		if v, ok := data[k]; ok && len(v) > 0 {
			return v, k
		}
	}
	return nil, ""
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// sanitize keeps crypto/tls's message (it never quotes key material).
func sanitize(err error) string { return strings.TrimPrefix(err.Error(), "tls: ") }
