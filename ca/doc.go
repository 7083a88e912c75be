// Package ca is warden's certificate authority: it turns a workload's CSR and
// its authenticated SPIFFE identity into a short-lived X.509 SVID, and holds
// the signing material and the trust bundle.
//
// The package is a pure library. Transports (gRPC), storage (files,
// Kubernetes Secrets) and upstreams (Vault) sit outside it and reach it
// through the KeyStore, Upstream, Clock and Meter seams. Errors are sentinel
// values (ErrInvalidCSR, ErrInvalidTTL, ErrIdentityMismatch, ErrNotReady)
// that the edges map to their own status codes.
package ca
