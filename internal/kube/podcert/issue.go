package podcert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
)

// The API's bounds on an issued certificate (k8s.io/kubernetes
// pkg/apis/certificates/validation ValidatePodCertificateRequestStatusUpdate):
// a lifetime of at least an hour, and beginRefreshAt at least ten
// minutes inside each end.
const (
	minLifetime   = time.Hour
	refreshMargin = 10 * time.Minute
	// defaultMaxExpiration is what the API server defaults
	// maxExpirationSeconds to; a stored request always has one.
	defaultMaxExpiration = 24 * time.Hour
)

// ReasonIssued is the reason of warden's Issued condition.
const ReasonIssued = "Issued"

// Lifetime is how long the certificate for a request allowing
// maxExpiration is: that bound, or warden's --max-ttl when shorter. The
// signing CA's own end may cut it further (Issue refuses a result under
// the API's one-hour minimum).
func Lifetime(maxExpiration, maxTTL time.Duration) time.Duration {
	return min(maxExpiration, maxTTL)
}

// RefreshAt is when the kubelet should renew a certificate valid from
// notBefore to notAfter: at half its life, as warden renews every other
// certificate, kept at least ten minutes inside either end (the API's
// bounds), in whole seconds.
func RefreshAt(notBefore, notAfter time.Time) time.Time {
	t := notBefore.Add(notAfter.Sub(notBefore) / 2).Truncate(time.Second)
	if lo := notBefore.Add(refreshMargin); t.Before(lo) {
		t = lo
	}
	if hi := notAfter.Add(-refreshMargin); t.After(hi) {
		t = hi
	}
	return t
}

// issue signs r for its pod's identity and writes the certificate into
// its status.
func (s *Signer) issue(ctx context.Context, r *certv1.PodCertificateRequest) (cause string, err error) {
	id, err := spiffeid.FromSegments(s.Authority.TrustDomain(), "ns", r.Namespace, "sa", r.Spec.ServiceAccountName)
	if err != nil {
		return s.deny(ctx, r, deny(ReasonInvalidRequest, "no SPIFFE ID for service account %s/%s: %v", r.Namespace, r.Spec.ServiceAccountName, err))
	}
	maxExp := defaultMaxExpiration
	if m := r.Spec.MaxExpirationSeconds; m != nil {
		maxExp = time.Duration(*m) * time.Second
	}
	iss, err := s.Authority.Sign(ca.SignRequest{StubCSR: r.Spec.StubPKCS10Request, ID: id, Lifetime: Lifetime(maxExp, s.Authority.MaxTTL())})
	switch {
	case errors.Is(err, ca.ErrUnsupportedKey):
		return s.deny(ctx, r, deny(ReasonUnsupportedKeyType, "%v: set keyType ECDSAP256 (or ECDSAP384, RSA3072, RSA4096) in the podCertificate volume", err))
	case errors.Is(err, ca.ErrInvalidCSR):
		return s.deny(ctx, r, deny(ReasonInvalidRequest, "%v", err))
	case errors.Is(err, ca.ErrNotReady):
		s.putOff(causeCAUnavailable, "the CA cannot sign: pod certificate requests wait", err)
		return causeCAUnavailable, err
	case err != nil:
		// Nothing else is the request's fault (a faulty signer, an HSM
		// away): it waits.
		s.putOff(causeCAUnavailable, "the CA failed to sign: pod certificate requests wait", err)
		return causeCAUnavailable, err
	}
	leaf := iss.Cert
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < minLifetime {
		err := fmt.Errorf("podcert: the signing CA expires at %s, too soon for the API's %s minimum lifetime (%s left)", leaf.NotAfter.UTC().Format(time.RFC3339), minLifetime, life)
		s.putOff(causeCAExpiring, "the signing CA expires within the hour: pod certificate requests wait for its renewal", err)
		return causeCAExpiring, err
	}
	// Leaf then intermediates: the root is the ClusterTrustBundle's.
	chain := bytes.Join(iss.Chain[:len(iss.Chain)-1], nil)
	out := r.DeepCopy()
	nb, na := leaf.NotBefore, leaf.NotAfter
	out.Status = certv1.PodCertificateRequestStatus{
		Conditions: []metav1.Condition{{
			Type: certv1.PodCertificateRequestConditionTypeIssued, Status: metav1.ConditionTrue, Reason: ReasonIssued,
			Message:            fmt.Sprintf("issued %s, valid until %s", id, na.UTC().Format(time.RFC3339)),
			LastTransitionTime: metav1.NewTime(s.Clock.Now().Truncate(time.Second)),
		}},
		CertificateChain: string(chain),
		NotBefore:        &metav1.Time{Time: nb},
		NotAfter:         &metav1.Time{Time: na},
		BeginRefreshAt:   &metav1.Time{Time: RefreshAt(nb, na)},
	}
	if cause, err := s.write(ctx, out); err != nil {
		return cause, err
	}
	s.resumed()
	s.Observer.Issued(s.Clock.Now().Sub(r.CreationTimestamp.Time))
	s.Log.Debug("pod certificate issued", "id", id.String(), "namespace", r.Namespace, "request", r.Name, "pod", r.Spec.PodName,
		"serial", fmt.Sprintf("%x", leaf.SerialNumber), "notAfter", na.UTC())
	return "", nil
}

// deny marks r Denied, for good: the kubelet gives the volume up.
func (s *Signer) deny(ctx context.Context, r *certv1.PodCertificateRequest, d *denial) (cause string, err error) {
	out := r.DeepCopy()
	out.Status = certv1.PodCertificateRequestStatus{Conditions: []metav1.Condition{{
		Type: certv1.PodCertificateRequestConditionTypeDenied, Status: metav1.ConditionTrue, Reason: d.reason, Message: d.message,
		LastTransitionTime: metav1.NewTime(s.Clock.Now().Truncate(time.Second)),
	}}}
	if cause, err := s.write(ctx, out); err != nil {
		return cause, err
	}
	s.Observer.Denied(d.reason)
	s.Log.Info("pod certificate request denied", "namespace", r.Namespace, "request", r.Name, "pod", r.Spec.PodName, "reason", d.reason, "message", d.message)
	return "", nil
}
