package api

import (
	"fmt"
	"strings"
	"time"
)

// ObjectMeta is the part of Kubernetes object metadata warden uses; other
// metadata fields written by the API server are accepted and ignored.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Generation  int64             `json:"generation,omitempty"`
	// CreationTimestamp (RFC 3339, set by the API server; optional in
	// standalone YAML) decides between conflicting policies: the oldest
	// wins, as in Istio.
	CreationTimestamp string `json:"creationTimestamp,omitempty"`
}

// Created is the creation time; the zero time when unset, which sorts
// before every set one (as Istio compares an unset timestamp).
func (m *ObjectMeta) Created() time.Time {
	t, _ := time.Parse(time.RFC3339, m.CreationTimestamp)
	return t
}

// Older orders objects as Istio resolves conflicts: by creation time,
// then by name (then namespace).
func Older(a, b *ObjectMeta) bool {
	ta, tb := a.Created(), b.Created()
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	if a.Name != b.Name {
		return a.Name < b.Name
	}
	return a.Namespace < b.Namespace
}

// WorkloadSelector selects pods by labels.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// check applies Istio's rules for selectors: no empty keys and no
// wildcards (a "*" would be taken literally and select nothing).
func (s *WorkloadSelector) check() error {
	for _, k := range sortedKeys(s.MatchLabels) {
		p := fmt.Sprintf("matchLabels[%q]", k)
		switch {
		case k == "":
			return &fieldError{p, "key must not be empty"}
		case strings.Contains(k, "*"):
			return &fieldError{p, "wildcard not allowed in label key match"}
		case strings.Contains(s.MatchLabels[k], "*"):
			return &fieldError{p, "wildcard not allowed in label value match"}
		}
	}
	return nil
}

// PolicyTargetReference points a policy at a Gateway or Service.
type PolicyTargetReference struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

func (r *PolicyTargetReference) check() error {
	if r.Namespace != "" {
		return &fieldError{"namespace", "cross namespace referencing is not currently supported"}
	}
	return nil
}
