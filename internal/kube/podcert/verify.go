package podcert

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of a Denied condition. The API defines the first two; warden's
// own name the check a request failed.
const (
	ReasonUnsupportedKeyType     = certv1.PodCertificateRequestConditionUnsupportedKeyType
	ReasonInvalidAnnotations     = certv1.PodCertificateRequestConditionInvalidUserConfig
	ReasonPodNotFound            = "PodNotFound"
	ReasonPodMismatch            = "PodMismatch"
	ReasonNodeMismatch           = "NodeMismatch"
	ReasonServiceAccountMismatch = "ServiceAccountMismatch"
	ReasonPodTerminated          = "PodTerminated"
	ReasonSignerNotRequested     = "SignerNotRequested"
	ReasonInvalidRequest         = "InvalidRequest"
)

// Reasons lists every reason warden denies a request for (the metrics'
// label values).
var Reasons = []string{ReasonUnsupportedKeyType, ReasonInvalidAnnotations, ReasonPodNotFound, ReasonPodMismatch,
	ReasonNodeMismatch, ReasonServiceAccountMismatch, ReasonPodTerminated, ReasonSignerNotRequested, ReasonInvalidRequest}

// denial is why a request is refused for good.
type denial struct{ reason, message string }

func deny(reason, format string, args ...any) *denial {
	return &denial{reason: reason, message: fmt.Sprintf(format, args...)}
}

// verify checks what the API server does not: the request names a pod
// that exists, with that UID, on that node, as that service account
// (name and UID), not finished, mounting a podCertificate volume for
// this signer, on a node of that UID; and no annotation warden does not
// know. Anybody allowed to create requests may write any of these fields
// (NodeRestriction holds only kubelets to them), and the identity comes
// from the pod, so every one is checked.
//
// The informers' objects are read first; one that is missing or differs
// is read again from the API server before a denial, so that an
// informer's lag puts a request off by one read and never denies it. An
// error is a read that failed: the request waits.
func (s *Signer) verify(ctx context.Context, r *certv1.PodCertificateRequest) (*denial, error) {
	if n := len(r.Spec.UnverifiedUserAnnotations); n > 0 {
		keys := slices.Sorted(maps.Keys(r.Spec.UnverifiedUserAnnotations))
		return deny(ReasonInvalidAnnotations, "warden honours no unverifiedUserAnnotations, and got %s: remove userAnnotations from the podCertificate volume (docs/pod-certificates.md)", echo(keys)), nil
	}
	ns, spec := r.Namespace, r.Spec
	podName := ns + "/" + spec.PodName
	pod, err := current(ctx, func() (*corev1.Pod, error) { return s.pods.Pods(ns).Get(spec.PodName) },
		func(ctx context.Context) (*corev1.Pod, error) {
			return s.Client.CoreV1().Pods(ns).Get(ctx, spec.PodName, metav1.GetOptions{})
		},
		func(p *corev1.Pod) bool {
			return p.UID == spec.PodUID && p.Spec.NodeName == string(spec.NodeName) && p.Spec.ServiceAccountName == spec.ServiceAccountName
		})
	switch {
	case apierrors.IsNotFound(err):
		return deny(ReasonPodNotFound, "pod %s does not exist", podName), nil
	case err != nil:
		return nil, fmt.Errorf("podcert: pod %s: %w", podName, err)
	case pod.UID != spec.PodUID:
		return deny(ReasonPodMismatch, "pod %s has UID %s, the request names UID %s (a pod of that name was replaced?)", podName, pod.UID, spec.PodUID), nil
	case pod.Spec.NodeName != string(spec.NodeName):
		return deny(ReasonNodeMismatch, "pod %s runs on node %q, the request names node %q", podName, pod.Spec.NodeName, spec.NodeName), nil
	case pod.Spec.ServiceAccountName != spec.ServiceAccountName:
		return deny(ReasonServiceAccountMismatch, "pod %s runs as service account %q, the request names %q", podName, pod.Spec.ServiceAccountName, spec.ServiceAccountName), nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return deny(ReasonPodTerminated, "pod %s has finished (%s)", podName, pod.Status.Phase), nil
	case !mountsSigner(pod, r.Spec.SignerName):
		return deny(ReasonSignerNotRequested, "pod %s mounts no podCertificate volume for signer %s", podName, r.Spec.SignerName), nil
	}
	saName := ns + "/" + spec.ServiceAccountName
	sa, err := current(ctx, func() (*corev1.ServiceAccount, error) { return s.sas.ServiceAccounts(ns).Get(spec.ServiceAccountName) },
		func(ctx context.Context) (*corev1.ServiceAccount, error) {
			return s.Client.CoreV1().ServiceAccounts(ns).Get(ctx, spec.ServiceAccountName, metav1.GetOptions{})
		},
		func(sa *corev1.ServiceAccount) bool { return sa.UID == spec.ServiceAccountUID })
	switch {
	case apierrors.IsNotFound(err):
		return deny(ReasonServiceAccountMismatch, "service account %s does not exist", saName), nil
	case err != nil:
		return nil, fmt.Errorf("podcert: service account %s: %w", saName, err)
	case sa.UID != spec.ServiceAccountUID:
		return deny(ReasonServiceAccountMismatch, "service account %s has UID %s, the request names UID %s", saName, sa.UID, spec.ServiceAccountUID), nil
	}
	node, err := current(ctx, func() (*corev1.Node, error) { return s.nodes.Get(string(spec.NodeName)) },
		func(ctx context.Context) (*corev1.Node, error) {
			return s.Client.CoreV1().Nodes().Get(ctx, string(spec.NodeName), metav1.GetOptions{})
		},
		func(n *corev1.Node) bool { return n.UID == spec.NodeUID })
	switch {
	case apierrors.IsNotFound(err):
		return deny(ReasonNodeMismatch, "node %q does not exist", spec.NodeName), nil
	case err != nil:
		return nil, fmt.Errorf("podcert: node %s: %w", spec.NodeName, err)
	case node.UID != spec.NodeUID:
		return deny(ReasonNodeMismatch, "node %q has UID %s, the request names UID %s", spec.NodeName, node.UID, spec.NodeUID), nil
	}
	return nil, nil
}

// current is the informer's object when it matches; otherwise (missing,
// or different) the API server's.
func current[T any](ctx context.Context, cached func() (T, error), live func(context.Context) (T, error), matches func(T) bool) (T, error) {
	if o, err := cached(); err == nil && matches(o) {
		return o, nil
	}
	return live(ctx)
}

// mountsSigner says whether pod has a podCertificate volume for signer.
func mountsSigner(pod *corev1.Pod, signer string) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			if src.PodCertificate != nil && src.PodCertificate.SignerName == signer {
				return true
			}
		}
	}
	return false
}

// echo lists at most five values: a denial must not become a huge
// condition message.
func echo(vs []string) string {
	if len(vs) <= 5 {
		return strings.Join(vs, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(vs[:5], ", "), len(vs)-5)
}
