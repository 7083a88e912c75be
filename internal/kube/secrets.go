package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
)

// Citadel-compatible Secret names, types and keys.
const (
	CASecretName      = "istio-ca-secret"
	CASecretType      = corev1.SecretType("istio.io/ca-root")
	PluggedSecretName = "cacerts"
	WorkloadType      = corev1.SecretType("istio.io/key-and-cert")
	SAAnnotation      = "istio.io/service-account.name"
	keyWorkloadKey    = "key.pem"
	keyCertChain      = "cert-chain.pem"
	keyRootCert       = "root-cert.pem"
)

// SecretStore is a ca.KeyStore on the Secret istio-ca-secret. Create uses
// the API server's create-if-absent: of two replicas racing, one gets
// AlreadyExists and re-reads the winner's root.
type SecretStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // default istio-ca-secret
}

var _ ca.KeyStore = (*SecretStore)(nil)

func (s *SecretStore) name() string {
	if s.Name == "" {
		return CASecretName
	}
	return s.Name
}

// Load implements ca.KeyStore.
func (s *SecretStore) Load(ctx context.Context) (ca.Files, error) {
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
func (s *SecretStore) Create(ctx context.Context, f ca.Files) error {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.name(), Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "warden"}},
		Type:       CASecretType,
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

// filesFromSecret reads CA material from Istio's key names, or from the
// kubernetes.io/tls names (tls.crt, tls.key, ca.crt) that cert-manager
// writes.
func filesFromSecret(sec *corev1.Secret) (ca.Files, error) {
	d := sec.Data
	f := ca.Files{CACert: d[ca.FileCACert], CAKey: d[ca.FileCAKey], CertChain: d[ca.FileCertChain], RootCert: d[ca.FileRootCert]}
	if len(f.CACert) == 0 && len(d["tls.crt"]) > 0 {
		f = ca.Files{CACert: firstPEM(d["tls.crt"]), CAKey: d["tls.key"], CertChain: d["tls.crt"], RootCert: d["ca.crt"]}
	}
	var missing []string
	for k, v := range map[string][]byte{ca.FileCACert: f.CACert, ca.FileCAKey: f.CAKey, ca.FileRootCert: f.RootCert} {
		if len(v) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return ca.Files{}, fmt.Errorf("kube: secret %s/%s lacks %v (or tls.crt, tls.key, ca.crt)", sec.Namespace, sec.Name, missing)
	}
	return f, nil
}
