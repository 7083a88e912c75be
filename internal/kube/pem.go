package kube

import (
	"crypto/x509"
	"slices"

	"github.com/wardenmesh/warden/ca"
)

// HoldsRoot says whether PEM b holds a certificate with fingerprint fp
// (ca.Fingerprint).
func HoldsRoot(b []byte, fp string) bool {
	certs, err := ca.ParseCerts(b)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return ca.Fingerprint(c) == fp })
}
