package casecret

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
)

// SourceConfigMap, in the install's namespace, records that the install
// signs with the plugged-in CA of Secret cacerts. A running replica keeps
// the CA it holds when cacerts is deleted; the record is what lets a
// replica started afterwards know that it must not fall back to
// istio-ca-secret (and sign under another root beside them). Deleting
// the record too is the operator's confirmation: every replica then
// switches to istio-ca-secret.
const SourceConfigMap = "warden-ca-source"

const sourcePluggedIn = "cacerts"

// RecordPluggedIn writes the record for plugged-in material m.
func RecordPluggedIn(ctx context.Context, cs kubernetes.Interface, namespace string, m *ca.Material) error {
	data := map[string]string{"source": sourcePluggedIn, "rootSHA256": ca.RootFingerprint(m)}
	cms := cs.CoreV1().ConfigMaps(namespace)
	cur, err := cms.Get(ctx, SourceConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: SourceConfigMap, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "warden"}},
			Data:       data,
		}, metav1.CreateOptions{FieldManager: kube.FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return nil // another replica recorded it
		}
	case err == nil:
		if cur.Data["source"] == data["source"] && cur.Data["rootSHA256"] == data["rootSHA256"] {
			return nil
		}
		upd := cur.DeepCopy()
		upd.Data = data
		_, err = cms.Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager})
		if apierrors.IsConflict(err) {
			return nil // another replica updated it
		}
	}
	if err != nil {
		return fmt.Errorf("kube: recording the plugged-in CA in configmap %s/%s: %w", namespace, SourceConfigMap, err)
	}
	return nil
}

// CheckNotPluggedIn refuses to start without cacerts when the install
// signs with it: the replicas running keep its CA, and this one would sign
// under another root.
func CheckNotPluggedIn(ctx context.Context, cs kubernetes.Interface, namespace string) error {
	fp, plugged, err := PluggedInRecord(ctx, cs, namespace)
	if err != nil {
		return err
	}
	if !plugged {
		return nil
	}
	return PluggedInGone(namespace, fp)
}

// PluggedInRecord reads the record: plugged is true when the install
// signs with cacerts, whose root's fingerprint rootSHA256 is.
func PluggedInRecord(ctx context.Context, cs kubernetes.Interface, namespace string) (rootSHA256 string, plugged bool, err error) {
	cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, SourceConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("kube: configmap %s/%s: %w", namespace, SourceConfigMap, err)
	}
	if cm.Data["source"] != sourcePluggedIn {
		return "", false, nil
	}
	return cm.Data["rootSHA256"], true, nil
}

// PluggedInGone is the error of an install whose cacerts is gone while
// its record says the replicas sign with it (root rootSHA256): what a
// replica starting then says, and warden check.
func PluggedInGone(namespace, rootSHA256 string) error {
	return fmt.Errorf("kube: secret %s/%s is gone, but this install signs with it (configmap %s/%s, root sha256 %s), and the replicas running still do: "+
		"restore the secret; or, to switch every replica to the self-signed root in secret %s/%s (a new root: workloads must be given it), delete configmap %s/%s",
		namespace, PluggedName, namespace, SourceConfigMap, rootSHA256, namespace, Name, namespace, SourceConfigMap)
}
