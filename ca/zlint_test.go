package ca_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

func lintCert(t *testing.T, what string, c *x509.Certificate) { catest.Zlint(t, what, c) }

func TestZlintEveryShape(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(time.Now())
	for _, rootKT := range allCAKeyTypes {
		root := catest.Root(t, ca.CAOptions{KeyType: rootKT, Clock: clock, CommonName: "warden root CA"})
		lintCert(t, "root "+string(rootKT), root.Cert)
		inter, err := ca.NewIntermediate(root, ca.CAOptions{KeyType: rootKT, Clock: clock, Organization: "cluster.local", CommonName: "warden intermediate", TTL: 365 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		lintCert(t, "intermediate "+string(rootKT), inter.Cert)
		for _, signer := range []*ca.Material{root, inter} {
			a := catest.Authority(t, signer, catest.WithClock(clock))
			for _, kt := range allWorkloadKeyTypes {
				iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, kt), nil), ID: callerX})
				if err != nil {
					t.Fatal(err)
				}
				lintCert(t, "leaf "+string(kt)+" under "+signer.Cert.Subject.CommonName+" "+string(rootKT), iss.Cert)
			}
		}
	}
}
