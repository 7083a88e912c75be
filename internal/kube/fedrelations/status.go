package fedrelations

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/wardenmesh/warden/federation"
)

// The conditions warden writes in an object's status.conditions.
const (
	// Accepted: True when the object's current generation is in effect;
	// False with the reason and the fix otherwise (its message says
	// whether a previous generation stays in effect).
	Accepted = "Accepted"
	// BundleFetched: for an object in effect, whether the leader holds
	// a good fetch of the trust domain's bundle that is not stale.
	BundleFetched = "BundleFetched"
)

// Reasons of the conditions.
const (
	ReasonAccepted   = "Accepted"
	ReasonInvalid    = "Invalid"  // the spec fails validation
	ReasonConflict   = "Conflict" // it names what the file or an earlier object names
	ReasonFetched    = "Fetched"
	ReasonNotFetched = "NotFetched" // no good fetch since the relationship was taken
	ReasonStale      = "Stale"      // no good fetch for three refresh intervals
)

// condition is one entry of status.conditions (metav1.Condition's
// fields, as the CRD's schema has them).
type condition struct {
	Type, Status, Reason, Message string
	ObservedGeneration            int64
}

// WriteStatus keeps every object's status conditions current until ctx
// is done: after each change of the objects or the file, and every
// interval (the bundles' fetches). It is the leader's work. bundles is
// the relationships' state (federation.Bundles.Status); nil writes no
// BundleFetched.
func (w *Watcher) WriteStatus(ctx context.Context, bundles func() []federation.Status, interval time.Duration) {
	w.init()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-t.C:
		}
		wait := interval
		if !w.writeAll(ctx, bundles) {
			wait = min(interval, time.Second) // a conflict or an outage: soon again
		}
		t.Reset(wait)
	}
}

// writeAll writes the status of every object whose conditions changed;
// it reports whether every write succeeded.
func (w *Watcher) writeAll(ctx context.Context, bundles func() []federation.Status) bool {
	byTD := map[spiffeid.TrustDomain]federation.Status{}
	if bundles != nil {
		for _, st := range bundles() {
			byTD[st.TrustDomain] = st
		}
	}
	type write struct {
		name string
		u    *unstructured.Unstructured
	}
	var writes []write
	now := w.Clock.Now().UTC().Format(time.RFC3339)
	w.mu.Lock()
	for name, o := range w.objs {
		want := []condition{accepted(o)}
		if r := o.outcome.InEffect; r != nil && bundles != nil {
			if st, ok := byTD[r.TrustDomain]; ok && st.URL == r.URL {
				want = append(want, fetched(o.u.GetGeneration(), st))
			}
		}
		u, changed := withConditions(o.u, want, now)
		if o.current != nil && o.outcome.InEffect == o.current {
			u, changed = withLastAccepted(u, changed)
		}
		if changed {
			writes = append(writes, write{name, u})
		}
	}
	w.mu.Unlock()
	ok := true
	for _, wr := range writes {
		got, err := w.Client.Resource(GVR).UpdateStatus(ctx, wr.u, metav1.UpdateOptions{})
		if err != nil {
			if ctx.Err() == nil {
				w.Log.Debug("federation: ClusterFederatedTrustDomain status not written; trying again", "name", wr.name, "error", err.Error())
			}
			ok = false
			continue
		}
		w.mu.Lock()
		if o := w.objs[wr.name]; o != nil && o.u.GetUID() == got.GetUID() && o.u.GetGeneration() == got.GetGeneration() {
			o.u = got // the next write starts from this resourceVersion
		}
		w.mu.Unlock()
	}
	return ok
}

// accepted is o's Accepted condition.
func accepted(o *object) condition {
	c := condition{Type: Accepted, ObservedGeneration: o.u.GetGeneration()}
	out := o.outcome
	if out.Err == nil && out.InEffect != nil {
		c.Status, c.Reason, c.Message = "True", ReasonAccepted, "in effect: "+describe(out.InEffect)
		return c
	}
	c.Status, c.Reason = "False", ReasonConflict
	if o.current == nil {
		c.Reason = ReasonInvalid
	}
	c.Message = fmt.Sprintf("refused: %v; nothing of this object is in effect: fix the spec", out.Err)
	if out.InEffect != nil {
		c.Message = fmt.Sprintf("refused: %v; generation %d stays in effect (%s) until the spec is fixed", out.Err, o.prevGen, describe(out.InEffect))
	}
	return c
}

// fetched is the BundleFetched condition of a relationship in effect.
func fetched(gen int64, st federation.Status) condition {
	c := condition{Type: BundleFetched, ObservedGeneration: gen}
	held := "no bundle"
	if st.From != "" {
		held = fmt.Sprintf("the %s bundle of %d roots", st.From, st.Roots)
	}
	lastErr := st.LastError
	if lastErr == "" {
		lastErr = "none"
	}
	switch {
	case st.Stale && st.LastSuccess.IsZero():
		c.Status, c.Reason = "False", ReasonNotFetched
		c.Message = fmt.Sprintf("no good fetch from %s yet (last error: %s); workloads get %s: check the endpoint, its profile and endpointSPIFFEID", st.URL, lastErr, held)
	case st.Stale:
		c.Status, c.Reason = "False", ReasonStale
		c.Message = fmt.Sprintf("no good fetch from %s for three refresh intervals (last error: %s); workloads still get %s: fix the endpoint or the relationship", st.URL, lastErr, held)
	default:
		c.Status, c.Reason = "True", ReasonFetched
		c.Message = fmt.Sprintf("%s from %s", held, st.URL)
		if st.HasSequence {
			c.Message += fmt.Sprintf(", spiffe_sequence %d", st.Sequence)
		}
	}
	return c
}

// withConditions is u with its conditions of the types in want replaced
// (lastTransitionTime kept when the status stays), and whether that
// changes anything.
func withConditions(u *unstructured.Unstructured, want []condition, now string) (*unstructured.Unstructured, bool) {
	have, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	out := make([]any, 0, len(have)+len(want))
	changed := false
	for _, c := range want {
		next := map[string]any{"type": c.Type, "status": c.Status, "reason": c.Reason, "message": c.Message,
			"observedGeneration": c.ObservedGeneration, "lastTransitionTime": now}
		var old map[string]any
		for _, h := range have {
			if m, ok := h.(map[string]any); ok && m["type"] == c.Type {
				old = m
			}
		}
		switch {
		case old == nil:
			changed = true
		case old["status"] != c.Status:
			changed = true
		default:
			if t, ok := old["lastTransitionTime"].(string); ok {
				next["lastTransitionTime"] = t
			}
			if old["reason"] != c.Reason || old["message"] != c.Message || fmt.Sprint(old["observedGeneration"]) != fmt.Sprint(c.ObservedGeneration) {
				changed = true
			}
		}
		out = append(out, next)
	}
	// Conditions of other types (none of warden's) are kept.
	for _, h := range have {
		m, ok := h.(map[string]any)
		if !ok || m["type"] == Accepted || m["type"] == BundleFetched {
			if ok && m["type"] == BundleFetched && !hasType(want, BundleFetched) {
				changed = true // the object is no longer in effect
			}
			continue
		}
		out = append(out, m)
	}
	if !changed {
		return u, false
	}
	u = u.DeepCopy()
	if err := unstructured.SetNestedSlice(u.Object, out, "status", "conditions"); err != nil {
		return u, false
	}
	return u, true
}

func hasType(cs []condition, t string) bool {
	for _, c := range cs {
		if c.Type == t {
			return true
		}
	}
	return false
}

// withLastAccepted records u's spec, in effect, as status.lastAccepted:
// the version a replica that never saw it (started after a refused edit)
// keeps in effect.
func withLastAccepted(u *unstructured.Unstructured, copied bool) (*unstructured.Unstructured, bool) {
	spec, err := json.Marshal(u.Object["spec"])
	if err != nil {
		return u, copied
	}
	have, _, _ := unstructured.NestedString(u.Object, "status", "lastAccepted", "spec")
	gen, _, _ := unstructured.NestedInt64(u.Object, "status", "lastAccepted", "generation")
	if have == string(spec) && gen == u.GetGeneration() {
		return u, copied
	}
	if !copied {
		u = u.DeepCopy()
	}
	if err := unstructured.SetNestedField(u.Object, map[string]any{"generation": u.GetGeneration(), "spec": string(spec)}, "status", "lastAccepted"); err != nil {
		return u, copied
	}
	return u, true
}
