package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/xds"
)

// federatedTrustDomains reads serve's --federation-file for the policy
// commands and check: the trust domains policies may name beside the
// mesh's, and which namespaces federate with each. None without a file.
// With objectsToo the file may instead hold ClusterFederatedTrustDomain
// objects as kubectl writes them (offline; check --kubernetes reads the
// objects from the API server, beside serve's file).
func federatedTrustDomains(file string, td spiffeid.TrustDomain, objectsToo bool) ([]*federation.Relationship, []string, error) {
	if file == "" {
		return nil, nil, nil
	}
	load := federation.LoadFile
	if objectsToo {
		load = federation.LoadFileOrObjects
	}
	rels, err := load(file, td)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: --federation-file: %v", errUsage, err)
	}
	var names []string
	for _, r := range rels {
		names = append(names, r.TrustDomain.Name())
	}
	return rels, names, nil
}

// namedBundles are the federation relationships as policy explain needs
// them: which trust domains a namespace's proxy validates peers of. The
// roots are one throwaway certificate (explain reads the trust domains'
// names, never their roots), so the proxy's configuration has the shape
// serve gives it.
type namedBundles struct {
	rels []*federation.Relationship
	root []*x509.Certificate
}

var _ xds.TrustBundles = namedBundles{}

func newNamedBundles(rels []*federation.Relationship) (namedBundles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return namedBundles{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Unix(0, 0), NotAfter: time.Unix(0, 0).Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return namedBundles{}, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return namedBundles{}, err
	}
	return namedBundles{rels: rels, root: []*x509.Certificate{c}}, nil
}

func (b namedBundles) ForNamespace(ns string) map[spiffeid.TrustDomain][]*x509.Certificate {
	out := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for _, r := range b.rels {
		if r.Federates(ns) {
			out[r.TrustDomain] = b.root
		}
	}
	return out
}

func (b namedBundles) LocalRoots() []*x509.Certificate { return b.root }
