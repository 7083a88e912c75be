// Package casecret keeps the CA's material in Secrets, with Citadel's
// names: Store, the istio-ca-secret created once (a ca.KeyStore);
// LoadPluggedIn and PluggedIn, the operator's cacerts Secret read at
// start and followed without a restart, and the record of it
// (SourceConfigMap) that keeps replicas under one root; Load, an
// install's CA as serve would read it.
package casecret

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
)

// Citadel-compatible Secret names, types and keys.
const (
	Name           = "istio-ca-secret"
	Type           = corev1.SecretType("istio.io/ca-root")
	PluggedName    = "cacerts"
	keyWorkloadKey = "key.pem"
)

// Store is a ca.KeyStore on the Secret istio-ca-secret. Create uses
// the API server's create-if-absent: of two replicas racing, one gets
// AlreadyExists and re-reads the winner's root.
type Store struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // default istio-ca-secret
}

var _ ca.KeyStore = (*Store)(nil)

func (s *Store) name() string {
	if s.Name == "" {
		return Name
	}
	return s.Name
}

// Load implements ca.KeyStore.
func (s *Store) Load(ctx context.Context) (ca.Files, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.name(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ca.Files{}, fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, s.name(), ca.ErrNotFound)
	}
	if err != nil {
		return ca.Files{}, fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, s.name(), err)
	}
	return filesFromSecret(sec)
}

// Create implements ca.KeyStore.
func (s *Store) Create(ctx context.Context, f ca.Files) error {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.name(), Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "warden"}},
		Type:       Type,
		Data: map[string][]byte{
			ca.FileCACert:    f.CACert,
			ca.FileCAKey:     f.CAKey,
			ca.FileCertChain: f.CertChain,
			ca.FileRootCert:  f.RootCert,
			keyWorkloadKey:   {}, // Citadel writes it empty in the CA secret
		},
	}
	_, err := s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, s.name(), ca.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("kube: create secret %s/%s: %w", s.Namespace, s.name(), err)
	}
	return nil
}

// Load reads an install's CA material as warden serve does: the
// plugged-in cacerts Secret when there is one, else istio-ca-secret. It
// says which it read.
func Load(ctx context.Context, cs kubernetes.Interface, ns string, now time.Time) (*ca.Material, string, error) {
	for _, name := range []string{PluggedName, Name} {
		sec, err := cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("kube: secret %s/%s: %w", ns, name, err)
		}
		f, err := filesFromSecret(sec)
		if err != nil {
			return nil, name, err
		}
		m, err := ca.DecodeMaterial(f, now)
		if err != nil {
			return nil, name, fmt.Errorf("kube: secret %s/%s: %w", ns, name, err)
		}
		return m, name, nil
	}
	return nil, "", fmt.Errorf("kube: neither %s/%s nor %s/%s exists: is warden installed in namespace %s?", ns, PluggedName, ns, Name, ns)
}

// filesFromSecret reads CA material from Istio's key names, or from the
// kubernetes.io/tls names (tls.crt, tls.key, ca.crt) that cert-manager
// writes.
func filesFromSecret(sec *corev1.Secret) (ca.Files, error) {
	d := sec.Data
	f := ca.Files{CACert: d[ca.FileCACert], CAKey: d[ca.FileCAKey], CertChain: d[ca.FileCertChain], RootCert: d[ca.FileRootCert]}
	if len(f.CACert) == 0 && len(d["tls.crt"]) > 0 {
		f = ca.Files{CACert: firstPEM(d["tls.crt"]), CAKey: d["tls.key"], CertChain: d["tls.crt"], RootCert: d["ca.crt"]}
	}
	if len(bytes.TrimSpace(f.RootCert)) == 0 {
		// Citadel and istiod write istio-ca-secret with root-cert.pem (and
		// cert-chain.pem, key.pem) empty and read only ca-cert.pem and
		// ca-key.pem: their CA is self-signed, so ca-cert.pem is the root
		// (security/pkg/pki/ca: VerifyAndSetAll(caCert, caKey, nil,
		// caCert)). A ca-cert.pem that is not self-signed takes its root
		// from the end of cert-chain.pem.
		f.RootCert = impliedRoot(f)
	}
	var missing []string
	for k, v := range map[string][]byte{ca.FileCACert: f.CACert, ca.FileCAKey: f.CAKey, ca.FileRootCert: f.RootCert} {
		if len(v) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return ca.Files{}, fmt.Errorf("kube: secret %s/%s lacks %v (or tls.crt, tls.key, ca.crt); an empty root-cert.pem is read from ca-cert.pem when that is self-signed, else from the last certificate of cert-chain.pem", sec.Namespace, sec.Name, missing)
	}
	return f, nil
}

// impliedRoot is the root of a secret that names none: ca-cert.pem when it
// is self-signed, else the last certificate of cert-chain.pem when that
// one is; nil when neither is.
func impliedRoot(f ca.Files) []byte {
	selfSigned := func(c *x509.Certificate) bool {
		return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
	}
	if certs, err := ca.ParseCerts(f.CACert); err == nil && len(certs) == 1 && selfSigned(certs[0]) {
		return f.CACert
	}
	if chain, err := ca.ParseCerts(f.CertChain); err == nil && len(chain) > 0 && selfSigned(chain[len(chain)-1]) {
		return ca.EncodeCerts(chain[len(chain)-1])
	}
	return nil
}

// firstPEM returns the first PEM block of data, re-encoded.
func firstPEM(data []byte) []byte {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil
	}
	return pem.EncodeToMemory(b)
}
