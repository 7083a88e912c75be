package podcert_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/podcert"
)

// TestAPIServerEnforcesStatusRules shows that the test API server holds
// a signer to the status rules warden's statuses are built for (so that
// every status it accepts elsewhere proves warden meets them), at their
// edges: a lifetime of exactly an hour and exactly maxExpirationSeconds
// passes, a second more or less does not; beginRefreshAt ten minutes
// inside either end passes (podcert.RefreshAt's half-life is), nine does
// not; notBefore must be the leaf's, within five minutes of the server's
// clock; the leaf must be for the stub's key; a denial carries nothing
// else; writing a status needs "sign" on the signer (a 422, not a 403);
// an issued status never changes.
func TestAPIServerEnforcesStatusRules(t *testing.T) {
	root := catest.Root(t, ca.CAOptions{})
	w := newWorkload(t, "node-a")
	cfg, _ := apiserver.Warden(t)
	wardenCS := kubernetes.NewForConfigOrDie(cfg)
	key := keyOf(t, "ECDSAP256")
	r := create(t, w.node.Client, request(t, w.pod(t, "app"), w.node.Node, w.sa, key, func(r *certv1.PodCertificateRequest) {
		r.Spec.MaxExpirationSeconds = ptr(int32(7200))
	}))
	id := spiffeID(w.ns, "app")
	leafFor := func(pub crypto.PublicKey, nb, na time.Time) *x509.Certificate {
		t.Helper()
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: nb, NotAfter: na,
			URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}, root.Cert, pub, root.Key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	now := time.Now().Truncate(time.Second)
	nb := now.Add(-time.Minute)
	issued := func(leaf *x509.Certificate, statusNB, refresh time.Time) certv1.PodCertificateRequestStatus {
		return certv1.PodCertificateRequestStatus{
			Conditions:       []metav1.Condition{{Type: "Issued", Status: metav1.ConditionTrue, Reason: podcert.ReasonIssued, LastTransitionTime: metav1.Now()}},
			CertificateChain: pemCert(leaf),
			NotBefore:        &metav1.Time{Time: statusNB}, NotAfter: &metav1.Time{Time: leaf.NotAfter}, BeginRefreshAt: &metav1.Time{Time: refresh},
		}
	}
	valid := func(life time.Duration) certv1.PodCertificateRequestStatus {
		leaf := leafFor(key.Public(), nb, nb.Add(life))
		return issued(leaf, nb, podcert.RefreshAt(leaf.NotBefore, leaf.NotAfter))
	}
	other := keyOf(t, "ECDSAP256")
	write := func(cs kubernetes.Interface, st certv1.PodCertificateRequestStatus) error {
		cur, err := apiserver.Client.CertificatesV1().PodCertificateRequests(w.ns).Get(context.Background(), r.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Status = st
		_, err = cs.CertificatesV1().PodCertificateRequests(w.ns).UpdateStatus(context.Background(), cur, metav1.UpdateOptions{})
		return err
	}
	hour := time.Hour
	for _, c := range []struct {
		name string
		st   certv1.PodCertificateRequestStatus
		want string
	}{
		{"a second over maxExpirationSeconds", valid(2*hour + time.Second), "leaf certificate lifetime must be <= spec.maxExpirationSeconds (7200)"},
		{"a second under an hour", valid(hour - time.Second), "leaf certificate lifetime must be >= 1 hour"},
		{"refresh nine minutes after notBefore", func() certv1.PodCertificateRequestStatus {
			l := leafFor(key.Public(), nb, nb.Add(hour))
			return issued(l, nb, nb.Add(9*time.Minute))
		}(), "must be at least 10 minutes after status.notBefore"},
		{"refresh nine minutes before notAfter", func() certv1.PodCertificateRequestStatus {
			l := leafFor(key.Public(), nb, nb.Add(hour))
			return issued(l, nb, l.NotAfter.Add(-9*time.Minute))
		}(), "must be at least 10 minutes before status.notAfter"},
		{"notBefore a second off the leaf's", func() certv1.PodCertificateRequestStatus {
			l := leafFor(key.Public(), nb, nb.Add(hour))
			return issued(l, nb.Add(time.Second), podcert.RefreshAt(nb, l.NotAfter))
		}(), "must be set to the NotBefore time encoded in the leaf certificate"},
		{"notBefore six minutes ago", func() certv1.PodCertificateRequestStatus {
			old := now.Add(-6 * time.Minute)
			l := leafFor(key.Public(), old, old.Add(hour))
			return issued(l, old, podcert.RefreshAt(old, l.NotAfter))
		}(), "must be set to within 5 minutes of kube-apiserver's current time"},
		{"another key", func() certv1.PodCertificateRequestStatus {
			l := leafFor(other.Public(), nb, nb.Add(hour))
			return issued(l, nb, podcert.RefreshAt(nb, l.NotAfter))
		}(), "leaf certificate was not issued to the requested public key"},
		{"a denial with a chain", func() certv1.PodCertificateRequestStatus {
			st := valid(hour)
			st.Conditions[0].Type, st.Conditions[0].Reason = "Denied", podcert.ReasonPodMismatch
			return st
		}(), "non-condition status fields must be empty when denying or failing the PodCertificateRequest"},
	} {
		if err := write(wardenCS, c.st); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant 422 %q", c.name, err, c.want)
		}
	}

	// Without "sign" on the signer, update on the status subresource is
	// not enough: alice gets it and is refused with a 422.
	ctx := context.Background()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "pcr-status-" + w.ns}, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"podcertificaterequests", "podcertificaterequests/status"}, Verbs: []string{"get", "update"}}}}
	if _, err := apiserver.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := apiserver.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name}, RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "alice"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	aliceCfg := rest.AnonymousClientConfig(apiserver.Config)
	aliceCfg.BearerToken = kubetest.UserToken
	alice := kubernetes.NewForConfigOrDie(aliceCfg)
	kubetest.Eventually(t, 10*time.Second, func() error {
		err := write(alice, valid(hour))
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `User "alice" is not permitted to "sign" for signer "`+signer+`"`) {
			return err
		}
		return nil
	})
	// A node may not write a status at all.
	if err := write(w.node.Client, valid(hour)); !apierrors.IsForbidden(err) {
		t.Errorf("the node wrote a status: %v", err)
	}

	// At the edges, as podcert builds them: accepted, then final.
	if err := write(wardenCS, valid(2*hour)); err != nil {
		t.Fatalf("a status of exactly maxExpirationSeconds, refreshed at half-life: %v", err)
	}
	if err := write(wardenCS, valid(hour)); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "immutable after PodCertificateRequest is issued") {
		t.Errorf("rewriting an issued status: %v", err)
	}
	// And an hour exactly, on a request of its own.
	r = create(t, w.node.Client, request(t, w.pod(t, "hour"), w.node.Node, w.sa, key, func(r *certv1.PodCertificateRequest) {
		r.Spec.MaxExpirationSeconds = ptr(int32(3600))
	}))
	if err := write(wardenCS, valid(hour)); err != nil {
		t.Fatalf("a status of exactly an hour: %v", err)
	}
}

// TestRefreshAt: half-life in whole seconds, never within ten minutes of
// either end.
func TestRefreshAt(t *testing.T) {
	nb := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		life time.Duration
		want time.Duration
	}{
		{time.Hour, 30 * time.Minute},
		{time.Hour + time.Second, 30 * time.Minute},
		{24 * time.Hour, 12 * time.Hour},
	} {
		if got := podcert.RefreshAt(nb, nb.Add(c.life)).Sub(nb); got != c.want {
			t.Errorf("RefreshAt(%s) = +%s, want +%s", c.life, got, c.want)
		}
	}
	if got := podcert.Lifetime(7862400*time.Second, ca.DefaultMaxTTL); got != ca.DefaultMaxTTL {
		t.Errorf("Lifetime = %s", got)
	}
}
