package xds_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/xds"
)

func testPair(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"web.example.com"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// TestCredentialSecret: Istio's Secret layouts become SDS secrets; the
// CA certificates come from <name>-cacert, else <name>'s ca.crt; a
// missing Secret or key, or a certificate that is not the key's, is an
// error naming the Secret and the keys, never the key material.
func TestCredentialSecret(t *testing.T) {
	cert, key := testPair(t)
	_, otherKey := testPair(t)
	secrets := map[string]map[string][]byte{
		"tls":            {"tls.crt": cert, "tls.key": key, "ca.crt": cert},
		"generic":        {"cert": cert, "key": key},
		"generic-cacert": {"cacert": cert},
		"mismatch":       {"tls.crt": cert, "tls.key": otherKey},
		"nokey":          {"tls.crt": cert},
		"garbage-ca":     {"tls.crt": cert, "tls.key": key, "ca.crt": []byte("not pem")},
		// Keys that would parse, in Secrets that are not TLS credentials.
		"istio.productpage": {"tls.crt": cert, "tls.key": key, "ca.crt": cert},
		"regcred":           {"cert": cert, "key": key},
	}
	types := map[string]string{"tls": "kubernetes.io/tls", "generic": "Opaque", "istio.productpage": "istio.io/key-and-cert", "regcred": "kubernetes.io/dockerconfigjson"}
	lookup := func(name string) (*xds.Secret, bool) {
		d, ok := secrets[name]
		return &xds.Secret{Type: types[name], Data: d}, ok
	}
	for _, name := range []string{"kubernetes://tls", "kubernetes://generic"} {
		s, err := xds.CredentialSecret(name, lookup)
		if err != nil || s.Name != name || string(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()) != string(cert) {
			t.Errorf("%s: %v %v", name, s, err)
		}
	}
	for _, name := range []string{"kubernetes://tls-cacert", "kubernetes://generic-cacert"} {
		s, err := xds.CredentialSecret(name, lookup)
		if err != nil || string(s.GetValidationContext().GetTrustedCa().GetInlineBytes()) != string(cert) {
			t.Errorf("%s: %v %v", name, s, err)
		}
	}
	for name, want := range map[string]string{
		"kubernetes://absent":                   "Secret absent does not exist in the gateway's namespace",
		"kubernetes://mismatch":                 "Secret mismatch: tls.crt and tls.key are not a certificate and its key",
		"kubernetes://nokey":                    "Secret nokey needs tls.crt and tls.key (or cert and key)",
		"kubernetes://garbage-ca-cacert":        "Secret garbage-ca: ca.crt holds no PEM certificate",
		"kubernetes://nokey-cacert":             "Secret nokey has no ca.crt (or cacert)",
		"file:///etc/passwd":                    "is not a gateway credential name",
		"kubernetes://istio.productpage":        "Secret istio.productpage is of type istio.io/key-and-cert, not a TLS credential",
		"kubernetes://istio.productpage-cacert": "Secret istio.productpage is of type istio.io/key-and-cert, not a TLS credential",
		"kubernetes://regcred":                  "Secret regcred is of type kubernetes.io/dockerconfigjson, not a TLS credential",
	} {
		_, err := xds.CredentialSecret(name, lookup)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", name, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: the error quotes a key", name)
		}
	}
}
