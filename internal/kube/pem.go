package kube

import (
	"crypto/x509"
	"encoding/pem"
	"slices"

	"github.com/wardenmesh/warden/ca"
)

// firstPEM returns the first PEM block of data, re-encoded.
func firstPEM(data []byte) []byte {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil
	}
	return pem.EncodeToMemory(b)
}

// HoldsRoot says whether PEM b holds a certificate with fingerprint fp
// (ca.Fingerprint).
func HoldsRoot(b []byte, fp string) bool {
	certs, err := ca.ParseCerts(b)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return ca.Fingerprint(c) == fp })
}
