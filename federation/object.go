package federation

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/wardenmesh/warden/api"
	"sigs.k8s.io/yaml"
)

// objectSpec is the spec of a ClusterFederatedTrustDomain object
// (federation.wardenmesh.io/v1alpha1): one entry of the relationships
// file's trustDomains, the same fields with the same meaning, plus the
// two fields of SPIRE's spec that an object must not carry here, decoded
// so that they are refused by name rather than read half.
type objectSpec struct {
	relationshipDoc
	// ClassName is SPIRE's: which spire-controller-manager reconciles
	// the object. warden has no classes.
	ClassName *string `json:"className"`
}

// ParseSpec reads the spec of a ClusterFederatedTrustDomain object (JSON,
// every field known) into a relationship, with the validation of a file
// entry (the same function). An object differs from a file entry in what
// it cannot point at: its bootstrap bundle is inline (trustDomainBundle;
// trustDomainBundleFile is refused, an object has no directory), and
// namespaces must be written (an object without them would federate
// nobody without a word). SPIRE's className is refused by name.
func ParseSpec(b []byte, local spiffeid.TrustDomain) (*Relationship, error) {
	var d objectSpec
	if err := yaml.UnmarshalStrict(b, &d); err != nil {
		return nil, err
	}
	switch {
	case d.ClassName != nil:
		return nil, errors.New("className: warden has no controller classes (SPIRE's className picks which spire-controller-manager reconciles the object); every warden replica reads every object: remove className")
	case d.TrustDomainBundleFile != "":
		return nil, errors.New("trustDomainBundleFile: an object carries its bootstrap bundle inline: put the bundle (SPIFFE bundle JSON or PEM roots) in trustDomainBundle")
	case d.Namespaces == nil:
		return nil, errors.New(`no namespaces: name the namespaces whose workloads federate with the trust domain (["*"] for every namespace, [] for none)`)
	}
	return d.relationship("", local)
}

// Candidate is a relationship offered in addition to a base set (the
// file's): Combine takes Current if it fits, else Previous (the last
// version that was taken), else neither.
type Candidate struct {
	Name    string        // how messages name it, e.g. the object's name
	Current *Relationship // nil: the current version does not parse
	// Invalid is why the current version does not parse (Current nil).
	Invalid  error
	Previous *Relationship // nil: none was ever taken
}

// Outcome is what Combine did with a Candidate: InEffect is the version
// taken (Current, Previous or nil), Err why Current was not (nil when it
// was).
type Outcome struct {
	Name     string
	InEffect *Relationship
	Err      error
}

// Combine adds the candidates to base (the file's relationships, a
// consistent set as Parse returns it), in the order given, each checked
// against base and the candidates taken before it: a trust domain
// already named (or the local one), an endpoint URL that already serves
// another trust domain, or a non-self-serving https_spiffe endpoint in a
// trust domain no relationship names is refused, and the candidate's
// Previous version is tried in its stead, so a bad edit loses nothing.
// The relationships in effect are base followed by the candidates taken.
func Combine(local spiffeid.TrustDomain, base []*Relationship, cands []Candidate) ([]*Relationship, []Outcome) {
	outs := make([]Outcome, len(cands))
	for i, c := range cands {
		outs[i].Name = c.Name
		if c.Current == nil {
			outs[i].Err = c.Invalid
			if c.Invalid == nil {
				outs[i].Err = errors.New("no spec")
			}
		}
	}
	// Taking a candidate can only be undone by the endpoint check (a
	// candidate dropped there may have been the trust domain another's
	// endpoint is in): repeat until nothing more is dropped.
	dropped := map[int]bool{} // candidates whose Current is out
	droppedPrev := map[int]bool{}
	for {
		named := map[spiffeid.TrustDomain]string{}
		servedBy := map[string]spiffeid.TrustDomain{}
		for _, r := range base {
			named[r.TrustDomain] = "the federation file"
			servedBy[r.URL] = r.TrustDomain
		}
		for i, c := range cands {
			outs[i].InEffect = nil
			if c.Current != nil && !dropped[i] {
				if err := fits(local, c.Current, named, servedBy); err != nil {
					outs[i].Err = err
					dropped[i] = true
				} else {
					outs[i].InEffect, outs[i].Err = c.Current, nil
				}
			}
			if outs[i].InEffect == nil && c.Previous != nil && !droppedPrev[i] && fits(local, c.Previous, named, servedBy) == nil {
				outs[i].InEffect = c.Previous
			}
			if r := outs[i].InEffect; r != nil {
				named[r.TrustDomain] = "ClusterFederatedTrustDomain " + c.Name
				servedBy[r.URL] = r.TrustDomain
			}
		}
		again := false
		for i, c := range cands {
			r := outs[i].InEffect
			if r == nil {
				continue
			}
			if err := endpointDomainKnown(local, r, func(td spiffeid.TrustDomain) bool { _, ok := named[td]; return ok }); err != nil {
				if r == c.Current {
					dropped[i] = true
					outs[i].Err = err
				} else {
					droppedPrev[i] = true
				}
				again = true
			}
		}
		if !again {
			break
		}
	}
	rels := append([]*Relationship(nil), base...)
	for _, o := range outs {
		if o.InEffect != nil {
			rels = append(rels, o.InEffect)
		}
	}
	return rels, outs
}

// fits says why r cannot join a set that names the trust domains named
// (by whom) and whose endpoints serve servedBy.
func fits(local spiffeid.TrustDomain, r *Relationship, named map[spiffeid.TrustDomain]string, servedBy map[string]spiffeid.TrustDomain) error {
	if r.TrustDomain == local {
		return fmt.Errorf("trustDomain %s is warden's own: a relationship names a foreign trust domain", r.TrustDomain)
	}
	if by, ok := named[r.TrustDomain]; ok {
		return fmt.Errorf("trustDomain %s is already named by %s: one relationship per trust domain; delete this object or remove the other", r.TrustDomain, by)
	}
	if other, ok := servedBy[r.URL]; ok {
		return fmt.Errorf("bundleEndpointURL %s also serves %s's bundle: a bundle endpoint serves one trust domain, give each trust domain its own endpoint", r.URL, other)
	}
	return nil
}

// endpointDomainKnown refuses a non-self-serving https_spiffe endpoint in
// a trust domain neither local nor named: it is authenticated with that
// trust domain's bundle, which nothing would hold.
func endpointDomainKnown(local spiffeid.TrustDomain, r *Relationship, named func(spiffeid.TrustDomain) bool) error {
	if r.Profile != HTTPSSPIFFE || r.SelfServing() {
		return nil
	}
	if td := r.EndpointID.TrustDomain(); td != local && !named(td) {
		return fmt.Errorf("the endpoint %s is in trust domain %s, which no relationship names: add one for it (or use the endpoint's own trust domain)", r.EndpointID, td)
	}
	return nil
}

// The kind's group, version and name (deploy/crds).
const (
	ObjectAPIVersion = "federation.wardenmesh.io/v1alpha1"
	ObjectKind       = "ClusterFederatedTrustDomain"
)

// storedObject is what ParseObjects reads of an object as `kubectl get
// -o yaml` writes it: the rest of metadata and the status are the API
// server's, and ignored.
type storedObject struct {
	APIVersion string                `json:"apiVersion"`
	Kind       string                `json:"kind"`
	Metadata   struct{ Name string } `json:"metadata"`
	Spec       json.RawMessage       `json:"spec"`
	Items      []json.RawMessage     `json:"items"`
}

// ParseObjects reads ClusterFederatedTrustDomain objects as `kubectl get
// clusterfederatedtrustdomains -o yaml` writes them (a List, one object,
// or several YAML documents), for the commands that judge policy offline:
// each spec as ParseSpec reads it, the set as Combine takes it (by name).
// An object a replica would refuse is an error naming it, since the
// answer would not be the cluster's.
func ParseObjects(b []byte, local spiffeid.TrustDomain) ([]*Relationship, error) {
	var cands []Candidate
	var add func(raw []byte, where string) error
	add = func(raw []byte, where string) error {
		var o storedObject
		if err := yaml.Unmarshal(raw, &o); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if o.Kind == "List" {
			for i, it := range o.Items {
				if err := add(it, fmt.Sprintf("%s: items[%d]", where, i)); err != nil {
					return err
				}
			}
			return nil
		}
		if o.APIVersion != ObjectAPIVersion || o.Kind != ObjectKind {
			return fmt.Errorf("%s: %s %s: want apiVersion %s, kind %s", where, o.APIVersion, o.Kind, ObjectAPIVersion, ObjectKind)
		}
		if o.Metadata.Name == "" {
			return fmt.Errorf("%s: %s without metadata.name", where, ObjectKind)
		}
		r, err := ParseSpec(o.Spec, local)
		cands = append(cands, Candidate{Name: o.Metadata.Name, Current: r, Invalid: err})
		return nil
	}
	for i, doc := range api.Documents(b) {
		if err := add([]byte(doc), fmt.Sprintf("document %d", i+1)); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(cands, func(a, c Candidate) int { return strings.Compare(a.Name, c.Name) })
	rels, outs := Combine(local, nil, cands)
	for _, o := range outs {
		if o.Err != nil {
			return nil, fmt.Errorf("%s %s is refused: %w", ObjectKind, o.Name, o.Err)
		}
	}
	return rels, nil
}

// LoadFileOrObjects reads path as the relationships file (LoadFile) or,
// when its first document names a kind, as ClusterFederatedTrustDomain
// objects (ParseObjects).
func LoadFileOrObjects(path string, local spiffeid.TrustDomain) ([]*Relationship, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	var head struct {
		Kind string `json:"kind"`
	}
	if docs := api.Documents(b); len(docs) > 0 {
		_ = yaml.Unmarshal([]byte(docs[0]), &head) // a document that does not parse: LoadFile says why
	}
	if head.Kind == "" {
		return LoadFile(path, local)
	}
	rels, err := ParseObjects(b, local)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", path, err)
	}
	return rels, nil
}
