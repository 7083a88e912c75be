package kube

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
)

// CheckBundles lists the namespaces (of total) whose istio-ca-root-cert
// ConfigMap is missing, does not hold the root with fingerprint fp (the
// one workload certificates chain to), or belongs to another install
// (its warden.io/owner is not owner; that install keeps it).
func CheckBundles(ctx context.Context, cs kubernetes.Interface, fp, owner string) (total int, missing, stale, others []string, err error) {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, nil, nil, nil, err
	}
	for _, n := range nss.Items {
		if n.Status.Phase == corev1.NamespaceTerminating {
			continue
		}
		total++
		cm, err := cs.CoreV1().ConfigMaps(n.Name).Get(ctx, BundleConfigMap, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, n.Name)
		case err != nil:
			return 0, nil, nil, nil, err
		case OtherOwner(cm.ObjectMeta, owner):
			others = append(others, n.Name+" ("+cm.Annotations[OwnerAnnotation]+")")
		case !HoldsRoot([]byte(cm.Data[BundleKey]), fp):
			stale = append(stale, n.Name)
		}
	}
	slices.Sort(missing)
	slices.Sort(stale)
	slices.Sort(others)
	return total, missing, stale, others, nil
}

// CheckSASecrets lists the Citadel-style istio.<sa> Secrets of this
// install (of total; another owner's are skipped) whose bundle lacks the
// root with fingerprint fp or whose certificate has expired (stale), and
// those past half-life, when warden would have renewed them (late).
func CheckSASecrets(ctx context.Context, cs kubernetes.Interface, fp, owner string, now time.Time) (total int, stale, late []string, err error) {
	list, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(WorkloadType)})
	if err != nil {
		return 0, nil, nil, err
	}
	for _, s := range list.Items {
		if OtherOwner(s.ObjectMeta, owner) {
			continue
		}
		total++
		name := s.Namespace + "/" + s.Name
		certs, err := ca.ParseCerts(s.Data[keyCertChain])
		switch {
		case err != nil || len(certs) == 0 || !HoldsRoot(s.Data[keyRootCert], fp) || !now.Before(certs[0].NotAfter):
			stale = append(stale, name)
		case !now.Before(halfLife(certs[0])):
			late = append(late, name)
		}
	}
	slices.Sort(stale)
	slices.Sort(late)
	return total, stale, late, nil
}
