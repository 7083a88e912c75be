package fedstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/kube/fedstore"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
)

// The tests share one real kube-apiserver and etcd (kubetest).
var apiserver kubetest.Server

func TestMain(m *testing.M) { kubetest.Main(m, &apiserver) }

var partner = spiffeid.RequireTrustDomainFromString("partner.test")

func root(t *testing.T) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "partner root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestStoreInTheAPIServer: the leader's Save is what every replica's
// Load reads back (roots, sequence, the fetch time), Touch moves the
// fetch time only, a trust domain never stored is none, and a bundle
// edited into something SPIRE would refuse is an error naming the key.
func TestStoreInTheAPIServer(t *testing.T) {
	ns := apiserver.Namespace(t, "fed")
	clock := catest.NewClock(time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC))
	leader := &fedstore.Store{Client: apiserver.Client, Namespace: ns, Clock: clock}
	replica := &fedstore.Store{Client: apiserver.Client, Namespace: ns}
	var _ federation.Store = replica

	if b, at, err := replica.Load(partner); b != nil || !at.IsZero() || err != nil {
		t.Fatalf("nothing stored yet: %v %v %v", b, at, err)
	}
	r := root(t)
	b := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{r})
	b.SetSequenceNumber(9)
	b.SetRefreshHint(time.Minute)
	if err := leader.Save(partner, b); err != nil {
		t.Fatal(err)
	}
	got, at, err := replica.Load(partner)
	if err != nil {
		t.Fatal(err)
	}
	if seq, _ := got.SequenceNumber(); len(got.X509Authorities()) != 1 || !got.X509Authorities()[0].Equal(r) || seq != 9 || !at.Equal(clock.Now()) {
		t.Fatalf("loaded %d roots, sequence %d, fetched %s", len(got.X509Authorities()), seq, at)
	}
	if b, _, err := replica.Load(spiffeid.RequireTrustDomainFromString("other.test")); b != nil || err != nil {
		t.Fatalf("a trust domain never stored: %v %v", b, err)
	}
	later := clock.Now().Add(5 * time.Minute)
	if err := leader.Touch(partner, later); err != nil {
		t.Fatal(err)
	}
	if got, at, err := replica.Load(partner); err != nil || !at.Equal(later) || len(got.X509Authorities()) != 1 {
		t.Fatalf("after Touch: fetched %s, %v", at, err)
	}

	// An edit that drops a key's "use": refused as SPIRE refuses it.
	ctx := context.Background()
	cm, err := apiserver.Client.CoreV1().ConfigMaps(ns).Get(ctx, fedstore.ConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["partner.test.json"] = strings.Replace(cm.Data["partner.test.json"], `"use":"x509-svid",`, "", 1)
	if _, err := apiserver.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := replica.Load(partner); err == nil || !strings.Contains(err.Error(), "ConfigMap "+ns+"/warden-federation-bundles key partner.test.json") {
		t.Fatalf("a damaged bundle: %v", err)
	}
}
