package sasecrets

import (
	"context"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
)

// inspect lists the Citadel-style istio.<sa> Secrets of this
// install (of total; another owner's are skipped) whose bundle lacks the
// root with fingerprint fp or whose certificate has expired (stale), and
// those past half-life, when warden would have renewed them (late).
func inspect(ctx context.Context, cs kubernetes.Interface, fp, owner string, now time.Time) (total int, stale, late []string, err error) {
	list, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(Type)})
	if err != nil {
		return 0, nil, nil, err
	}
	for _, s := range list.Items {
		if kube.OtherOwner(s.ObjectMeta, owner) {
			continue
		}
		total++
		name := s.Namespace + "/" + s.Name
		certs, err := ca.ParseCerts(s.Data[keyCertChain])
		switch {
		case err != nil || len(certs) == 0 || !kube.HoldsRoot(s.Data[keyRootCert], fp) || !now.Before(certs[0].NotAfter):
			stale = append(stale, name)
		case !now.Before(halfLife(certs[0])):
			late = append(late, name)
		}
	}
	slices.Sort(stale)
	slices.Sort(late)
	return total, stale, late, nil
}
