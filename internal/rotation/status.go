package rotation

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// Status is what 'warden ca rotate --status' shows.
type Status struct {
	Phase   string `json:"phase"`
	Target  string `json:"target"`
	Force   bool   `json:"force,omitempty"`
	Waiting string `json:"waiting,omitempty"`
	// CurrentRoot is the root the rotation replaces (the CA's until
	// activation; trusted beside NextRoot until retirement), NextRoot the
	// one that replaces it.
	CurrentRoot    string              `json:"currentRootSHA256"`
	CurrentExpires time.Time           `json:"currentRootNotAfter"`
	NextRoot       string              `json:"nextRootSHA256,omitempty"`
	NextExpires    time.Time           `json:"nextRootNotAfter,omitzero"`
	PreparedAt     time.Time           `json:"preparedAt,omitzero"`
	PublishedAt    time.Time           `json:"publishedAt,omitzero"`
	ActivatedAt    time.Time           `json:"activatedAt,omitzero"`
	RetireAfter    time.Time           `json:"retireAfter,omitzero"`
	Consumers      map[string]Holdings `json:"consumers,omitempty"`
	RequestSeq     int64               `json:"requestSeq,omitempty"` // Kubernetes: the last operator request taken
	RequestError   string              `json:"requestError,omitempty"`
	// StepError is why the step towards Target fails (the server retries
	// it every second), since StepErrorSince; empty once a step went
	// through.
	StepError      string    `json:"stepError,omitempty"`
	StepErrorSince time.Time `json:"stepErrorSince,omitzero"`
	// A plugged-in CA is rotated by editing its files: the status then
	// says, for every root of the bundle, who holds it.
	Plugged string        `json:"plugged,omitempty"`
	Roots   []RootHolders `json:"roots,omitempty"`
	// Upstream names where the root rotates when it is not warden's
	// (Vault): the steps follow the upstream's issuers, not requests.
	// Retiring are further old roots still trusted (a second rotation
	// before the first retired).
	Upstream string         `json:"upstream,omitempty"`
	Retiring []RetiringRoot `json:"retiring,omitempty"`
	// Manual says, where the root rotates elsewhere, how to rotate it
	// (the answer to a step asked by hand).
	Manual string `json:"manual,omitempty"`
}

// RetiringRoot is an old root trusted until RetireAfter.
type RetiringRoot struct {
	SHA256      string    `json:"sha256"`
	NotAfter    time.Time `json:"notAfter"`
	RetireAfter time.Time `json:"retireAfter"`
}

type Holdings struct {
	Total   int      `json:"total"`
	Missing []string `json:"missing,omitempty"`
}

func (r *Rotator) Status() Status {
	r.mu.Lock()
	st, cur, next, waiting, seq, reqErr, stepErr, stepErrSince := r.st, r.cur, r.next, r.waiting, r.requestSeq, r.requestErr, r.stepErr, r.stepErrSince
	r.mu.Unlock()
	if r.plugged != "" {
		cur = r.authority.Material()
	}
	out := Status{Phase: PhaseName(st.Phase), Target: PhaseName(st.Target), Force: st.Force, Waiting: waiting,
		CurrentRoot: ca.RootFingerprint(cur), CurrentExpires: cur.Roots[0].NotAfter, NextRoot: st.NextRootSHA256,
		PreparedAt: st.PreparedAt, PublishedAt: st.PublishedAt, ActivatedAt: st.ActivatedAt, RetireAfter: st.RetireAfter, RequestSeq: seq, RequestError: reqErr,
		StepError: stepErr, StepErrorSince: stepErrSince}
	if st.NextRootSHA256 != "" {
		out.Consumers = r.holders(st.NextRootSHA256)
	}
	if next != nil {
		out.NextExpires = next.Roots[0].NotAfter
	}
	if r.plugged != "" {
		out.Plugged = r.plugged
		// What an operator rotating by hand needs: who holds each root.
		for i, root := range r.authority.Bundles().Roots() {
			fp := ca.Fingerprint(root)
			out.Roots = append(out.Roots, RootHolders{SHA256: fp, Subject: root.Subject.String(), Signing: i == 0, NotAfter: root.NotAfter, Consumers: r.holders(fp)})
		}
	}
	return out
}

func (r *Rotator) holders(fp string) map[string]Holdings {
	out := map[string]Holdings{}
	for name, c := range r.sources() {
		t, m := c(fp)
		out[name] = Holdings{Total: t, Missing: m}
	}
	return out
}

type RootHolders struct {
	SHA256    string              `json:"sha256"`
	Subject   string              `json:"subject"`
	Signing   bool                `json:"signing,omitempty"`
	NotAfter  time.Time           `json:"notAfter"`
	Consumers map[string]Holdings `json:"consumers"`
}

// Print writes the status for people.
func (st Status) Print(w io.Writer) {
	fmt.Fprintf(w, "phase: %s (target %s%s)\n", st.Phase, st.Target, map[bool]string{true: ", forced"}[st.Force])
	// Once activated the new root signs: it is named first, and the one
	// it replaces "old".
	if st.Phase == string(ca.PhaseActivated) {
		fmt.Fprintf(w, "signing root: sha256 %s%s (the new root)\n", st.NextRoot, expires(st.NextExpires))
		fmt.Fprintf(w, "old root:     sha256 %s%s, trusted until retirement\n", st.CurrentRoot, expires(st.CurrentExpires))
	} else {
		fmt.Fprintf(w, "signing root: sha256 %s%s\n", st.CurrentRoot, expires(st.CurrentExpires))
		if st.NextRoot != "" {
			fmt.Fprintf(w, "new root:     sha256 %s%s\n", st.NextRoot, expires(st.NextExpires))
		}
	}
	for _, t := range []struct {
		name string
		at   time.Time
	}{{"prepared", st.PreparedAt}, {"published", st.PublishedAt}, {"activated", st.ActivatedAt}, {"retire after", st.RetireAfter}} {
		if !t.at.IsZero() {
			fmt.Fprintf(w, "%-13s %s\n", t.name+":", t.at.UTC().Format(time.RFC3339))
		}
	}
	printHolders(w, "", st.Consumers)
	for _, root := range st.Roots {
		role := "trusted"
		if root.Signing {
			role = "signs"
		}
		fmt.Fprintf(w, "bundle root sha256 %s (%s; %s, expires %s)\n", root.SHA256, role, root.Subject, root.NotAfter.UTC().Format(time.RFC3339))
		printHolders(w, "  ", root.Consumers)
	}
	for _, r := range st.Retiring {
		fmt.Fprintf(w, "old root:     sha256 %s%s, trusted until %s\n", r.SHA256, expires(r.NotAfter), r.RetireAfter.UTC().Format(time.RFC3339))
	}
	if st.Plugged != "" {
		fmt.Fprintf(w, "plugged-in CA from %s: rotate it by editing the files (docs/ca.md)\n", st.Plugged)
	}
	if st.Upstream != "" {
		fmt.Fprintf(w, "the root rotates in %s: warden publishes a new root it finds there at once, and signs under it once Vault does and every consumer holds it (docs/vault.md)\n", st.Upstream)
	}
	if st.Waiting != "" {
		fmt.Fprintf(w, "waiting: %s\n", st.Waiting)
	}
	if st.StepError != "" {
		fmt.Fprintf(w, "error: the step towards %s fails since %s, retried every second: %s\n", st.Target, st.StepErrorSince.UTC().Format(time.RFC3339), st.StepError)
	}
}

// expires is ", expires <t>", or nothing for a zero t (a status from a
// server that did not report it).
func expires(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return ", expires " + t.UTC().Format(time.RFC3339)
}

func printHolders(w io.Writer, indent string, hs map[string]Holdings) {
	names := make([]string, 0, len(hs))
	for n := range hs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		h := hs[n]
		fmt.Fprintf(w, "%s%s: %d of %d hold the %s\n", indent, n, h.Total-len(h.Missing), h.Total, map[bool]string{true: "new root", false: "root"}[indent == ""])
		for _, m := range h.Missing {
			fmt.Fprintf(w, "%s  missing: %s\n", indent, m)
		}
	}
}

// Status is what 'warden ca rotate --status' shows in this mode: the
// phase, the roots, who holds the new one, and what comes next.
func (u *Upstream) Status() Status {
	u.mu.Lock()
	st, waiting, stepErr, since := u.st, u.waiting, u.stepErr, u.stepErrSince
	phase := u.phaseLocked()
	u.mu.Unlock()
	out := Status{Phase: PhaseName(phase), Target: PhaseName(ca.PhaseNone), Waiting: waiting, Upstream: u.cfg.Describe, Manual: u.cfg.Manual,
		StepError: stepErr, StepErrorSince: since, PublishedAt: st.PublishedAt, ActivatedAt: st.ActivatedAt}
	if st.Signing == nil {
		return out
	}
	out.CurrentRoot, out.CurrentExpires = ca.Fingerprint(st.Signing), st.Signing.NotAfter
	switch phase {
	case ca.PhasePublished:
		out.Target = PhaseName(ca.PhaseActivated)
		out.NextRoot, out.NextExpires = ca.Fingerprint(st.Next), st.Next.NotAfter
		out.ActivatedAt = time.Time{}
	case ca.PhaseActivated:
		out.Target = PhaseName(ca.PhaseRetired)
		old := st.Old[0]
		out.CurrentRoot, out.CurrentExpires = ca.Fingerprint(old.Root), old.Root.NotAfter
		out.NextRoot, out.NextExpires = ca.Fingerprint(st.Signing), st.Signing.NotAfter
		out.RetireAfter = old.RetireAfter
	default:
		out.PublishedAt, out.ActivatedAt = time.Time{}, time.Time{}
	}
	if out.NextRoot != "" {
		out.Consumers = u.holders(out.NextRoot, st)
	}
	for i, o := range st.Old {
		if phase == ca.PhaseActivated && i == 0 {
			continue
		}
		out.Retiring = append(out.Retiring, RetiringRoot{SHA256: ca.Fingerprint(o.Root), NotAfter: o.Root.NotAfter, RetireAfter: o.RetireAfter})
	}
	return out
}

// Request refuses: the root rotates in the upstream.
func (u *Upstream) Request(ca.Phase, bool) error {
	return fmt.Errorf("%w: %s", ca.ErrRotation, u.cfg.Manual)
}

// Abort refuses: the root rotates in the upstream.
func (u *Upstream) Abort() error { return u.Request(ca.PhaseNone, false) }

func (u *Upstream) advanceNow(context.Context) error { return nil }

// ServeAdmin serves the admin socket l (ListenAdmin; 'ca rotate
// --status') until ctx is done.
func (u *Upstream) ServeAdmin(ctx context.Context, l net.Listener) error {
	return serveAdmin(ctx, l, u)
}
