package federation

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/wardenmesh/warden/ca"
)

// Profile is a bundle endpoint profile (SPIFFE Federation §5.2).
type Profile string

// The two profiles every relying party must support.
const (
	HTTPSWeb    Profile = "https_web"
	HTTPSSPIFFE Profile = "https_spiffe"
)

// AllNamespaces in a relationship's namespaces hands its bundle to every
// namespace. It must be written out: no list means no namespace.
const AllNamespaces = "*"

// Relationship is one federation relationship: the foreign trust domain,
// where its bundle is served and how that endpoint is authenticated, and
// which of warden's namespaces receive its bundle.
type Relationship struct {
	TrustDomain spiffeid.TrustDomain
	URL         string
	Profile     Profile
	// EndpointID is the SPIFFE ID the https_spiffe endpoint presents.
	EndpointID spiffeid.ID
	// Bootstrap validates the first https_spiffe fetch from a
	// self-serving endpoint (one whose ID is in TrustDomain); later
	// fetches use the last bundle fetched. Nil for https_web.
	Bootstrap *spiffebundle.Bundle
	// Namespaces whose workloads federate with TrustDomain; AllNamespaces
	// for all of them.
	Namespaces []string
}

// SelfServing says whether the endpoint's ID is in the trust domain whose
// bundle it serves (§5.2.2.2).
func (r *Relationship) SelfServing() bool { return r.EndpointID.MemberOf(r.TrustDomain) }

// Federates says whether workloads of namespace ns receive the bundle.
func (r *Relationship) Federates(ns string) bool {
	return slices.Contains(r.Namespaces, AllNamespaces) || slices.Contains(r.Namespaces, ns)
}

// fileDoc is the relationships file: the fields of SPIRE's
// ClusterFederatedTrustDomain spec (spire-controller-manager), so that one
// description serves both, plus the namespaces that federate; and, for
// what it can say, Istio's meshConfig.caCertificates list.
type fileDoc struct {
	TrustDomains   []relationshipDoc `json:"trustDomains"`
	CACertificates []meshCertDoc     `json:"caCertificates"`
}

// meshCertDoc is one entry of Istio's meshConfig.caCertificates, with the
// field names Istio writes (CertificateData in istio.io/api
// mesh/v1alpha1/config.proto), plus warden's namespaces.
type meshCertDoc struct {
	PEM             string   `json:"pem"`
	SpiffeBundleURL string   `json:"spiffeBundleUrl"`
	CertSigners     []string `json:"certSigners"`
	TrustDomains    []string `json:"trustDomains"`
	// Namespaces is required here (nil: not written): Istio's entry
	// applies to every workload, so one copied without it must not
	// silently federate nobody, nor everybody.
	Namespaces []string `json:"namespaces"`
}

type relationshipDoc struct {
	TrustDomain           string     `json:"trustDomain"`
	BundleEndpointURL     string     `json:"bundleEndpointURL"`
	BundleEndpointProfile profileDoc `json:"bundleEndpointProfile"`
	// TrustDomainBundle is the bootstrap bundle inline (SPIFFE bundle
	// JSON, as SPIRE's field, or PEM); TrustDomainBundleFile names a
	// file holding it, relative to the relationships file.
	TrustDomainBundle     string   `json:"trustDomainBundle"`
	TrustDomainBundleFile string   `json:"trustDomainBundleFile"`
	Namespaces            []string `json:"namespaces"`
}

type profileDoc struct {
	Type             string `json:"type"`
	EndpointSPIFFEID string `json:"endpointSPIFFEID"`
}

// LoadFile reads the relationships file at path (YAML or JSON, every
// field known). local is warden's own trust domain, which no relationship
// may name.
func LoadFile(path string, local spiffeid.TrustDomain) ([]*Relationship, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	rels, err := Parse(b, filepath.Dir(path), local)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", path, err)
	}
	return rels, nil
}

// Parse decodes a relationships document; relative bundle files are read
// from dir.
func Parse(b []byte, dir string, local spiffeid.TrustDomain) ([]*Relationship, error) {
	var doc fileDoc
	if err := yaml.UnmarshalStrict(b, &doc); err != nil {
		var head struct {
			Kind string `json:"kind"`
		}
		if yaml.Unmarshal(b, &head) == nil && head.Kind != "" {
			return nil, fmt.Errorf("%w: this is a %s document, not the relationships file (trustDomains, caCertificates): serve reads %s objects from the API server in Kubernetes mode; only the policy commands and check take them in a file (docs/federation.md)", err, head.Kind, ObjectKind)
		}
		return nil, err
	}
	var out []*Relationship
	seen := map[spiffeid.TrustDomain]bool{}
	servedBy := map[string]spiffeid.TrustDomain{} // endpoint URL -> the trust domain it serves
	add := func(where string, r *Relationship) error {
		if seen[r.TrustDomain] {
			return fmt.Errorf("%s: %s is named twice: one relationship per trust domain", where, r.TrustDomain)
		}
		// A bundle endpoint serves one trust domain's bundle (SPIFFE
		// Federation §4); one document taken for two trust domains
		// would let each one's CA sign for the other.
		if other, ok := servedBy[r.URL]; ok {
			return fmt.Errorf("%s: %s also serves %s's bundle: a bundle endpoint serves one trust domain, give each trust domain its own endpoint", where, r.URL, other)
		}
		seen[r.TrustDomain] = true
		servedBy[r.URL] = r.TrustDomain
		out = append(out, r)
		return nil
	}
	for i, d := range doc.TrustDomains {
		r, err := d.relationship(dir, local)
		if err != nil {
			return nil, fmt.Errorf("trustDomains[%d]: %w", i, err)
		}
		if err := add(fmt.Sprintf("trustDomains[%d]", i), r); err != nil {
			return nil, err
		}
	}
	for i, d := range doc.CACertificates {
		r, err := d.relationship(local)
		if err != nil {
			return nil, fmt.Errorf("caCertificates[%d]: %w", i, err)
		}
		if err := add(fmt.Sprintf("caCertificates[%d]", i), r); err != nil {
			return nil, err
		}
	}
	// A non-self-serving https_spiffe endpoint is authenticated with
	// another relationship's bundle (or the local one): it must exist.
	for i, r := range out {
		if err := endpointDomainKnown(local, r, func(td spiffeid.TrustDomain) bool { return seen[td] }); err != nil {
			return nil, fmt.Errorf("trustDomains[%d]: %w", i, err)
		}
	}
	return out, nil
}

func (d relationshipDoc) relationship(dir string, local spiffeid.TrustDomain) (*Relationship, error) {
	td, err := spiffeid.TrustDomainFromString(d.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trustDomain %q: %w", d.TrustDomain, err)
	}
	if td == local {
		return nil, fmt.Errorf("trustDomain %s is warden's own: a relationship names a foreign trust domain", td)
	}
	r := &Relationship{TrustDomain: td, URL: d.BundleEndpointURL, Profile: Profile(d.BundleEndpointProfile.Type), Namespaces: d.Namespaces}
	if err := checkURL(r.URL); err != nil {
		return nil, fmt.Errorf("bundleEndpointURL: %w", err)
	}
	if err := checkNamespaces(r.Namespaces); err != nil {
		return nil, err
	}
	bundleGiven := d.TrustDomainBundle != "" || d.TrustDomainBundleFile != ""
	switch r.Profile {
	case HTTPSWeb:
		if d.BundleEndpointProfile.EndpointSPIFFEID != "" {
			return nil, errors.New("bundleEndpointProfile.endpointSPIFFEID is for https_spiffe; https_web endpoints are authenticated by the Web PKI")
		}
		if bundleGiven {
			return nil, errors.New("trustDomainBundle is for https_spiffe; an https_web endpoint needs no bootstrap bundle")
		}
	case HTTPSSPIFFE:
		if r.EndpointID, err = spiffeid.FromString(d.BundleEndpointProfile.EndpointSPIFFEID); err != nil {
			return nil, fmt.Errorf("bundleEndpointProfile.endpointSPIFFEID %q: %w", d.BundleEndpointProfile.EndpointSPIFFEID, err)
		}
		if d.TrustDomainBundle != "" && d.TrustDomainBundleFile != "" {
			return nil, errors.New("trustDomainBundle and trustDomainBundleFile exclude each other")
		}
		if r.SelfServing() && !bundleGiven {
			return nil, fmt.Errorf("the endpoint %s serves its own trust domain's bundle: give trustDomainBundle or trustDomainBundleFile to authenticate the first fetch", r.EndpointID)
		}
		if bundleGiven {
			raw := []byte(d.TrustDomainBundle)
			if d.TrustDomainBundleFile != "" {
				p := d.TrustDomainBundleFile
				if !filepath.IsAbs(p) {
					p = filepath.Join(dir, p)
				}
				if raw, err = os.ReadFile(p); err != nil {
					return nil, fmt.Errorf("trustDomainBundleFile: %w", err)
				}
			}
			if r.Bootstrap, err = parseBootstrap(td, raw); err != nil {
				return nil, fmt.Errorf("trustDomainBundle: %w", err)
			}
		}
	default:
		return nil, fmt.Errorf("bundleEndpointProfile.type %q: want %s or %s", d.BundleEndpointProfile.Type, HTTPSWeb, HTTPSSPIFFE)
	}
	return r, nil
}

// relationship reads an entry of Istio's caCertificates: one with
// spiffeBundleUrl and a single foreign trust domain is an https_web
// relationship, which is how Istio fetches it (pkg/spiffe
// RetrieveSpiffeBundleRootCerts over the system's roots, the pool
// pilot/pkg/bootstrap gives pilot/pkg/trustbundle). What Istio does with
// the rest (a flat pool of extra roots) warden refuses, naming the fix.
func (d meshCertDoc) relationship(local spiffeid.TrustDomain) (*Relationship, error) {
	switch {
	case d.PEM != "" && d.SpiffeBundleURL != "":
		return nil, errors.New("pem and spiffeBundleUrl exclude each other (one of the two, as in Istio)")
	case d.PEM != "":
		return nil, errors.New("pem: warden adds no roots to a flat pool (Istio's caCertificates, istio/istio#30454): for a foreign trust domain give spiffeBundleUrl and trustDomains, or a trustDomains entry (https_spiffe) with the PEM as its trustDomainBundle")
	case d.SpiffeBundleURL == "":
		return nil, errors.New("no spiffeBundleUrl: give the URL of the foreign trust domain's bundle endpoint (https_web)")
	case len(d.CertSigners) > 0:
		return nil, errors.New("certSigners: warden's CA signs every workload and is no registration authority for Kubernetes signers: remove certSigners")
	case len(d.TrustDomains) == 0:
		return nil, errors.New("no trustDomains: Istio would trust the endpoint's roots for warden's own trust domain (a flat pool): name the one foreign trust domain whose bundle spiffeBundleUrl serves")
	case len(d.TrustDomains) > 1:
		return nil, fmt.Errorf("trustDomains: %d trust domains for one spiffeBundleUrl: a bundle endpoint serves one trust domain's bundle, and one bundle for several would let each one's CA sign for the others: write one entry per trust domain, each with its own endpoint", len(d.TrustDomains))
	case d.Namespaces == nil:
		return nil, errors.New(`no namespaces: Istio trusts these roots in every workload, warden only in the namespaces listed: add namespaces (["*"] for every namespace)`)
	}
	td, err := spiffeid.TrustDomainFromString(d.TrustDomains[0])
	if err != nil {
		return nil, fmt.Errorf("trustDomains: %q: %w", d.TrustDomains[0], err)
	}
	if td == local {
		return nil, fmt.Errorf("trustDomains: %s is warden's own: Istio would add the endpoint's roots to it (a flat pool); a relationship names a foreign trust domain", td)
	}
	u := d.SpiffeBundleURL
	if !strings.Contains(u, "://") {
		u = "https://" + u // as Istio: a URL without a scheme is https
	}
	if err := checkURL(u); err != nil {
		return nil, fmt.Errorf("spiffeBundleUrl: %w", err)
	}
	if err := checkNamespaces(d.Namespaces); err != nil {
		return nil, err
	}
	return &Relationship{TrustDomain: td, URL: u, Profile: HTTPSWeb, Namespaces: d.Namespaces}, nil
}

func checkNamespaces(nss []string) error {
	for _, ns := range nss {
		if ns == "" {
			return errors.New(`namespaces: an empty name (use "*" for every namespace)`)
		}
	}
	return nil
}

// checkURL applies the endpoint URL requirements of both profiles: https,
// no userinfo (§5.2.1.1, §5.2.2.1).
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("%q: a bundle endpoint URL is https", s)
	case u.User != nil:
		return fmt.Errorf("%q: a bundle endpoint URL carries no userinfo", s)
	case u.Host == "":
		return fmt.Errorf("%q: no host", s)
	}
	return nil
}

// parseBootstrap reads a bundle as SPIFFE bundle JSON or PEM roots.
func parseBootstrap(td spiffeid.TrustDomain, raw []byte) (*spiffebundle.Bundle, error) {
	trimmed := bytes.TrimSpace(raw)
	if strings.HasPrefix(string(trimmed), "{") {
		if err := CheckDocument(trimmed); err != nil {
			return nil, err
		}
		return spiffebundle.Parse(td, trimmed)
	}
	certs, err := ca.ParseCerts(trimmed)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates (give SPIFFE bundle JSON or PEM roots)")
	}
	return spiffebundle.FromX509Authorities(td, certs), nil
}

// Roots returns b's X.509 authorities (nil for a nil bundle).
func Roots(b *spiffebundle.Bundle) []*x509.Certificate {
	if b == nil {
		return nil
	}
	return b.X509Authorities()
}
