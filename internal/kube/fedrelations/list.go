package fedrelations

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/wardenmesh/warden/federation"
)

// List reads the objects once, for one-shot commands (warden check): the
// relationships in effect (file's, then the objects' that
// federation.Combine takes, by name) and what became of each object; a
// refused edit's previous version is its status's lastAccepted, as on a
// replica. An API server that does not serve the kind has no objects.
func List(ctx context.Context, c dynamic.Interface, local spiffeid.TrustDomain, file []*federation.Relationship) ([]*federation.Relationship, []federation.Outcome, error) {
	l, err := c.Resource(GVR).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return file, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kube: list %s: %w", GVR.Resource, err)
	}
	items := slices.Clone(l.Items)
	slices.SortFunc(items, func(a, b unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
	cands := make([]federation.Candidate, len(items))
	for i := range items {
		o := &object{u: &items[i]}
		o.lastAccepted(local)
		r, err := parse(&items[i], local)
		cands[i] = federation.Candidate{Name: items[i].GetName(), Current: r, Invalid: err, Previous: o.previous}
	}
	rels, outs := federation.Combine(local, file, cands)
	return rels, outs, nil
}
