package ca_test

import (
	"crypto/x509"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// TestBundlesPublish: subscribers hear of a change of roots, once, in
// order, and of nothing else; an Authority publishes on activation.
func TestBundlesPublish(t *testing.T) {
	t.Parallel()
	a := catest.Root(t, ca.CAOptions{CommonName: "a"})
	b := catest.Root(t, ca.CAOptions{CommonName: "b"})
	bs := ca.NewBundles([]*x509.Certificate{a.Cert})
	var got [][]string
	cancel := bs.Subscribe(func(roots []*x509.Certificate) {
		var names []string
		for _, r := range roots {
			names = append(names, r.Subject.CommonName)
		}
		got = append(got, names)
	})
	for _, set := range [][]*x509.Certificate{{a.Cert}, {a.Cert, b.Cert}, {a.Cert, b.Cert}, {b.Cert}} {
		bs.Set(set)
	}
	if want := [][]string{{"a", "b"}, {"b"}}; len(got) != 2 || got[0][1] != "b" || got[1][0] != "b" {
		t.Fatalf("notifications %v, want %v", got, want)
	}
	cancel()
	if !bs.Set([]*x509.Certificate{a.Cert}) || len(got) != 2 {
		t.Fatal("a cancelled subscriber was called, or Set did not report the change")
	}
	if ca.SameRoots([]*x509.Certificate{a.Cert, b.Cert}, []*x509.Certificate{b.Cert, a.Cert}) {
		t.Error("SameRoots ignores order")
	}

	// The authority publishes when an activation changes the roots.
	auth := catest.Authority(t, a)
	n := 0
	auth.Bundles().Subscribe(func([]*x509.Certificate) { n++ })
	if err := auth.Activate(a); err != nil {
		t.Fatal(err)
	}
	if err := auth.Activate(b); err != nil {
		t.Fatal(err)
	}
	if n != 1 || !ca.SameRoots(auth.Bundles().Roots(), []*x509.Certificate{b.Cert}) {
		t.Fatalf("%d notifications, roots %v", n, auth.Bundles().Roots())
	}
}

// TestReplaceSkipsUnchangedMaterial: re-reading the same CA files
// activates nothing; a new root does.
func TestReplaceSkipsUnchangedMaterial(t *testing.T) {
	t.Parallel()
	m := catest.Root(t, ca.CAOptions{CommonName: "a"})
	a := catest.Authority(t, m)
	if changed, err := a.Replace(&ca.Material{Cert: m.Cert, Key: m.Key, Roots: m.Roots}); changed || err != nil {
		t.Fatalf("the same material: changed %t, %v", changed, err)
	}
	n := catest.Root(t, ca.CAOptions{CommonName: "b"})
	if changed, err := a.Replace(n); !changed || err != nil || !a.Material().Cert.Equal(n.Cert) {
		t.Fatalf("a new root: changed %t, %v", changed, err)
	}
}
