package sds

import (
	"crypto/x509"
	"os"
	"path/filepath"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/atomicfile"
)

// File names written by WriteFiles, as Istio's agent and proxyless gRPC's
// file_watcher certificate provider expect them.
const (
	FileCertChain = "cert-chain.pem"
	FileKey       = "key.pem"
	FileRootCert  = "root-cert.pem"
)

// WriteFiles writes s's key (0600), chain and the bundle into dir, each
// atomically; the key goes first so a reader never sees a chain without
// its key.
func WriteFiles(dir string, s *SVID, roots []*x509.Certificate) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	key, err := ca.MarshalKey(s.Key)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteReplace(filepath.Join(dir, FileKey), key, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteReplace(filepath.Join(dir, FileCertChain), s.ChainPEM(), 0o644); err != nil {
		return err
	}
	return atomicfile.WriteReplace(filepath.Join(dir, FileRootCert), ca.EncodeCerts(roots...), 0o644)
}
