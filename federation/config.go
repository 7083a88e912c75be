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
// description serves both, plus the namespaces that federate.
type fileDoc struct {
	TrustDomains []relationshipDoc `json:"trustDomains"`
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
		return nil, err
	}
	var out []*Relationship
	seen := map[spiffeid.TrustDomain]bool{}
	for i, d := range doc.TrustDomains {
		r, err := d.relationship(dir, local)
		if err != nil {
			return nil, fmt.Errorf("trustDomains[%d]: %w", i, err)
		}
		if seen[r.TrustDomain] {
			return nil, fmt.Errorf("trustDomains[%d]: %s is named twice: one relationship per trust domain", i, r.TrustDomain)
		}
		seen[r.TrustDomain] = true
		out = append(out, r)
	}
	// A non-self-serving https_spiffe endpoint is authenticated with
	// another relationship's bundle (or the local one): it must exist.
	for i, r := range out {
		if r.Profile == HTTPSSPIFFE && !r.SelfServing() && r.EndpointID.TrustDomain() != local && !seen[r.EndpointID.TrustDomain()] {
			return nil, fmt.Errorf("trustDomains[%d]: the endpoint %s is in trust domain %s, which no relationship names: add one for it (or use the endpoint's own trust domain)", i, r.EndpointID, r.EndpointID.TrustDomain())
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
	for _, ns := range r.Namespaces {
		if ns == "" {
			return nil, errors.New(`namespaces: an empty name (use "*" for every namespace)`)
		}
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
