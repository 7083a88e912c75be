package podcert

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/internal/check"
)

// Check is warden check's look at the requests addressed to signer (the
// ones kube-controller-manager has not yet deleted, at most 15 minutes
// old): requests pending for longer than pendingAfter (warden's leader
// is not signing: an error), denials (a warning each, with the pod and
// the reason) and failures, which warden never writes (another writer
// holds "sign" on the signer: an error).
func Check(ctx context.Context, cs kubernetes.Interface, signer string, now time.Time, pendingAfter time.Duration) []check.Result {
	const what = "pod-certificates"
	list, err := cs.CertificatesV1().PodCertificateRequests("").List(ctx, metav1.ListOptions{FieldSelector: "spec.signerName=" + signer})
	if err != nil {
		return []check.Result{{Check: what, Status: check.Error, Message: fmt.Sprintf("pod certificate requests for %s: %v", signer, err)}}
	}
	var late, failed []string
	denied := map[string][]string{} // by reason
	issued, ndenied := 0, 0
	for _, r := range list.Items {
		name := r.Namespace + "/" + r.Name + " (pod " + r.Spec.PodName + ")"
		c := settled(&r)
		switch {
		case c == nil:
			if age := now.Sub(r.CreationTimestamp.Time); age > pendingAfter {
				late = append(late, fmt.Sprintf("%s, %s old", name, age.Truncate(time.Second)))
			}
		case c.Type == certv1.PodCertificateRequestConditionTypeIssued:
			issued++
		case c.Type == certv1.PodCertificateRequestConditionTypeDenied:
			denied[c.Reason] = append(denied[c.Reason], name+": "+c.Message)
			ndenied++
		default:
			failed = append(failed, fmt.Sprintf("%s: %s: %s", name, c.Reason, c.Message))
		}
	}
	slices.Sort(late)
	slices.Sort(failed)
	var out []check.Result
	if len(late) > 0 {
		out = append(out, check.Result{Check: what, Status: check.Error, Message: fmt.Sprintf("%d pod certificate requests for %s pending longer than %s: %s (is warden's leader running, and can its CA sign? see its log and warden_podcert_retries_total)",
			len(late), signer, pendingAfter, list5(late))})
	}
	for _, reason := range slices.Sorted(maps.Keys(denied)) {
		ds := denied[reason]
		slices.Sort(ds)
		out = append(out, check.Result{Check: what, Status: check.Warn, Message: fmt.Sprintf("%d pod certificate requests for %s denied, %s: %s", len(ds), signer, reason, list5(ds))})
	}
	if len(failed) > 0 {
		out = append(out, check.Result{Check: what, Status: check.Error, Message: fmt.Sprintf("%d pod certificate requests for %s marked Failed, which warden never writes (another signer holds \"sign\" on it?): %s", len(failed), signer, list5(failed))})
	}
	if len(late)+len(failed) == 0 {
		out = append(out, check.Result{Check: what, Status: check.OK, Message: fmt.Sprintf("%d pod certificate requests for %s: %d issued, %d denied, none pending longer than %s", len(list.Items), signer, issued, ndenied, pendingAfter)})
	}
	return out
}

// settled is r's terminal condition, or nil.
func settled(r *certv1.PodCertificateRequest) *metav1.Condition {
	for i, c := range r.Status.Conditions {
		switch c.Type {
		case certv1.PodCertificateRequestConditionTypeIssued, certv1.PodCertificateRequestConditionTypeDenied, certv1.PodCertificateRequestConditionTypeFailed:
			if c.Status == metav1.ConditionTrue {
				return &r.Status.Conditions[i]
			}
		}
	}
	return nil
}

func list5(vs []string) string {
	if len(vs) <= 5 {
		return strings.Join(vs, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(vs[:5], "; "), len(vs)-5)
}
