package sds

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/atomicfile"
)

// File names written by WriteFiles, as Istio's agent and proxyless gRPC's
// file_watcher certificate provider expect them.
const (
	FileCertChain = "cert-chain.pem"
	FileKey       = "key.pem"
	FileRootCert  = "root-cert.pem"
	// FileBundleMap is the SPIFFE bundle map proxyless gRPC reads as its
	// file_watcher provider's spiffe_trust_bundle_map_file.
	FileBundleMap = "spiffe-bundle-map.json"
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

// WriteBundleMap writes bundles, one per trust domain, into dir as a
// SPIFFE bundle map, atomically: {"trust_domains": {"<td>": <SPIFFE
// bundle>}}, keyed by the bare trust domain name as grpc-go reads it
// (internal/credentials/spiffe.BundleMapFromBytes, grpc-go 1.85, gRFC
// A87). A trust domain without roots is left out (an empty bundle does
// not parse).
func WriteBundleMap(dir string, bundles map[spiffeid.TrustDomain][]*x509.Certificate) error {
	doc := map[string]json.RawMessage{}
	for td, roots := range bundles {
		if len(roots) == 0 {
			continue
		}
		b, err := spiffebundle.FromX509Authorities(td, roots).Marshal()
		if err != nil {
			return fmt.Errorf("sds: bundle map: %s: %w", td.Name(), err)
		}
		doc[td.Name()] = b
	}
	out, err := json.Marshal(map[string]any{"trust_domains": doc})
	if err != nil {
		return fmt.Errorf("sds: bundle map: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.WriteReplace(filepath.Join(dir, FileBundleMap), out, 0o644)
}
