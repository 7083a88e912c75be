package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Phase is how far a root rotation has come. Each phase is a set of
// material the authority signs with and a trust bundle it publishes:
//
//	(none)     sign with Current; bundle = Current's roots
//	prepared   the same; Next is kept beside it
//	published  sign with Current; bundle = Current's roots + Next's
//	activated  sign with Next;    bundle = Next's roots + Current's
//	(retired)  Next becomes Current; bundle = its roots only
//
// The first root of the bundle is always the one new leaves chain to, so a
// consumer can tell from the bundle alone that signing moved (and renew
// its certificate early).
type Phase string

// Rotation phases.
const (
	PhaseNone      Phase = ""
	PhasePrepared  Phase = "prepared"
	PhasePublished Phase = "published"
	PhaseActivated Phase = "activated"
	// PhaseRetired is a target only: reaching it ends the rotation.
	PhaseRetired Phase = "retired"
)

var phaseOrder = []Phase{PhaseNone, PhasePrepared, PhasePublished, PhaseActivated, PhaseRetired}

// Index orders phases; -1 for an unknown one.
func (p Phase) Index() int { return slices.Index(phaseOrder, p) }

// ParsePhase reads a phase, by its name or by the verb that reaches it
// ("publish" for published); "none" is PhaseNone.
func ParsePhase(s string) (Phase, error) {
	switch s {
	case "none":
		return PhaseNone, nil
	case "prepare", "prepared":
		return PhasePrepared, nil
	case "publish", "published":
		return PhasePublished, nil
	case "activate", "activated":
		return PhaseActivated, nil
	case "retire", "retired":
		return PhaseRetired, nil
	}
	return "", fmt.Errorf("ca: unknown rotation step %q (want prepare, publish, activate or retire)", s)
}

// Rotation is a root rotation in progress: the material signing before it
// (Current), the material that replaces it (Next), and the phase.
type Rotation struct {
	Phase   Phase
	Current *Material
	Next    *Material
	// Times each phase was reached; RetireAfter is when the last leaf
	// Current may have signed expires (set at activation).
	PreparedAt, PublishedAt, ActivatedAt, RetireAfter time.Time
}

// RotationState is what a store (a data directory, the API server)
// remembers of a rotation.
type RotationState struct {
	Phase          Phase     `json:"phase"`
	Target         Phase     `json:"target"`
	Force          bool      `json:"force,omitempty"`
	NextRootSHA256 string    `json:"nextRootSHA256"`
	PreparedAt     time.Time `json:"preparedAt"`
	PublishedAt    time.Time `json:"publishedAt,omitzero"`
	ActivatedAt    time.Time `json:"activatedAt,omitzero"`
	RetireAfter    time.Time `json:"retireAfter,omitzero"`
	// Retiring is set while the prepared CA replaces the main store's
	// files: a start that finds it finishes the job.
	Retiring bool `json:"retiring,omitempty"`
}

// ErrRotation marks a refused rotation step.
var ErrRotation = errors.New("ca: rotation")

// Signing is the material the authority signs with in r's phase (see
// Phase), or Current when there is no rotation.
func (r *Rotation) Signing() *Material {
	switch r.Phase {
	case PhasePublished:
		return withRoots(r.Current, MergeRoots(r.Current.Roots, r.Next.Roots))
	case PhaseActivated:
		return withRoots(r.Next, MergeRoots(r.Next.Roots, r.Current.Roots))
	default:
		return r.Current
	}
}

// Serving is the material the CA's own serving certificate comes from:
// Current until the rotation retires, so that a client of the CA that
// holds only the old root keeps reaching it through the overlap.
func (r *Rotation) Serving() *Material {
	if r.Phase == PhaseActivated || r.Phase == PhasePublished {
		return withRoots(r.Current, MergeRoots(r.Current.Roots, r.Next.Roots))
	}
	return r.Current
}

// Check validates that Next can replace Current: it signs, its roots are
// not Current's, and it does not expire before Current. (An equal expiry
// is accepted: certificates carry whole seconds, so a root of the same
// lifetime made in the same second as Current, a rotation right after
// the first start, expires at the same instant.)
func (r *Rotation) Check(now time.Time) error {
	if r.Current == nil || r.Next == nil {
		return fmt.Errorf("%w: no prepared CA", ErrRotation)
	}
	if err := r.Next.Validate(now); err != nil {
		return fmt.Errorf("%w: the prepared CA: %v", ErrRotation, err)
	}
	for _, n := range r.Next.Roots {
		if containsCert(r.Current.Roots, n) {
			return fmt.Errorf("%w: the prepared CA's root %s is already trusted: a rotation needs a new root", ErrRotation, n.Subject)
		}
	}
	if r.Next.NotAfter().Before(r.Current.NotAfter()) {
		return fmt.Errorf("%w: the prepared CA expires %s, before the current one (%s)", ErrRotation, r.Next.NotAfter().UTC().Format(time.RFC3339), r.Current.NotAfter().UTC().Format(time.RFC3339))
	}
	return nil
}

// OldLeavesExpire is when every leaf Current can have signed by now has
// expired: leaves are at most maxTTL long and never outlive the signer.
func OldLeavesExpire(current *Material, now time.Time, maxTTL time.Duration) time.Time {
	t := now.Add(maxTTL)
	if na := current.NotAfter(); na.Before(t) {
		t = na
	}
	return t
}

// Fingerprint is the hex SHA-256 of a certificate's DER: how warden
// names a root in its stores, its logs, and a rotation's consumers.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// RootFingerprint is the Fingerprint of m's first root.
func RootFingerprint(m *Material) string { return Fingerprint(m.Roots[0]) }

func withRoots(m *Material, roots []*x509.Certificate) *Material {
	c := *m
	c.Roots = roots
	return &c
}

// MergeRoots is a followed by those of b it lacks: one bundle from two.
func MergeRoots(a, b []*x509.Certificate) []*x509.Certificate {
	out := slices.Clone(a)
	for _, c := range b {
		if !containsCert(out, c) {
			out = append(out, c)
		}
	}
	return out
}
