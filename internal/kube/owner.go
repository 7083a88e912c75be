package kube

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// OwnerAnnotation names the warden install (its namespace) that writes an
// object warden keeps in other namespaces: the istio-ca-root-cert
// ConfigMaps and the istio.<sa> Secrets. Another install leaves such an
// object alone and reports the conflict, instead of rewriting it against
// the owner for ever.
const OwnerAnnotation = "warden.io/owner"

// DefaultOwner is the owner of an install that names none.
const DefaultOwner = "warden-system"

// WriterDefaults fills the settings a leader's writer (of ConfigMaps,
// Secrets, ClusterTrustBundles, webhook configurations) leaves unset: a
// discarding logger, a 10-minute informer resync, the default owner.
func WriterDefaults(log *slog.Logger, resync time.Duration, owner string) (*slog.Logger, time.Duration, string) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if resync == 0 {
		resync = 10 * time.Minute
	}
	if owner == "" {
		owner = DefaultOwner
	}
	return log, resync, owner
}

// FieldManager is the manager name of warden's writes, which the API
// server records in each object's managedFields.
const FieldManager = "warden"

// Guard backoff: after fightRepairs repairs of one object within
// fightWindow, someone else is writing it; warden stops for fightBackoff,
// doubling up to maxFightBackoff while the fight goes on.
const (
	fightRepairs    = 3
	fightWindow     = time.Minute
	fightBackoff    = time.Minute
	maxFightBackoff = 30 * time.Minute
)

// Guard decides, for one controller, whether warden may write an object
// it keeps: not when another install owns it, and not while it is in a
// fight with some other writer. Refusals are logged loudly, once per
// backoff period and object.
type Guard struct {
	owner string // this install
	kind  string // for messages: "ConfigMap", "Secret"
	log   *slog.Logger
	now   func() time.Time

	// Backoff, when set, hears of each backoff the guard starts: kind,
	// and why (OtherInstall, Fight).
	Backoff func(kind, reason string)

	mu     sync.Mutex
	fights map[string]*fight
}

// Why a Guard backs off from an object (Guard.Backoff's reason).
const (
	OtherInstall = "other_install" // another install's mark is on it
	Fight        = "fight"         // another writer keeps changing it
)

type fight struct {
	repairs []time.Time
	backoff time.Duration
	until   time.Time
}

// NewGuard makes the guard of the objects of kind (for messages:
// "ConfigMap", "Secret") that install owner writes.
func NewGuard(owner, kind string, log *slog.Logger, now func() time.Time) *Guard {
	return &Guard{owner: owner, kind: kind, log: log, now: now, fights: map[string]*fight{}}
}

// Annotate marks a new or rewritten object as this install's.
func (g *Guard) Annotate(m *metav1.ObjectMeta) {
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[OwnerAnnotation] = g.owner
}

// Owned says whether the object carries this install's mark.
func (g *Guard) Owned(m metav1.Object) bool { return m.GetAnnotations()[OwnerAnnotation] == g.owner }

// MayWrite says whether warden may rewrite the existing object m (key is
// namespace/name); when not, it says when to look again. An object
// without an owner (written by an older warden, or by istiod before
// warden replaced it) is adopted.
func (g *Guard) MayWrite(key string, m metav1.Object) (ok bool, retry time.Duration) {
	if other := m.GetAnnotations()[OwnerAnnotation]; other != "" && other != g.owner {
		return false, g.hold(key, OtherInstall, func() string {
			return fmt.Sprintf("%s %s belongs to another warden install (%s=%s); not writing it. Two installs in one cluster give workloads two trust bundles: remove one, or delete the object to hand it to this install (%s)",
				g.kind, key, OwnerAnnotation, other, g.owner)
		})
	}
	g.mu.Lock()
	f := g.fights[key]
	now := g.now()
	if f != nil && now.Before(f.until) {
		g.mu.Unlock()
		return false, f.until.Sub(now)
	}
	if f != nil {
		// Drop repairs older than the window.
		kept := f.repairs[:0]
		for _, t := range f.repairs {
			if now.Sub(t) < fightWindow {
				kept = append(kept, t)
			}
		}
		f.repairs = kept
		if len(kept) == 0 {
			delete(g.fights, key) // at peace for a window
		}
		if len(f.repairs) >= fightRepairs {
			g.mu.Unlock()
			return false, g.hold(key, Fight, func() string {
				return fmt.Sprintf("%s %s keeps being changed by another writer (last: %s) after warden repairs it; backing off. Find the other controller (another CA such as istiod?) and stop it",
					g.kind, key, lastOtherManager(m))
			})
		}
	}
	g.mu.Unlock()
	return true, 0
}

// Wrote records a repair of key (not a first creation).
func (g *Guard) Wrote(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.fights[key]
	if f == nil {
		f = &fight{}
		g.fights[key] = f
	}
	f.repairs = append(f.repairs, g.now())
}

// hold starts or extends key's backoff and logs why.
func (g *Guard) hold(key, reason string, why func() string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	f := g.fights[key]
	if f == nil {
		f = &fight{}
		g.fights[key] = f
	}
	if now.Before(f.until) {
		return f.until.Sub(now)
	}
	f.backoff = min(max(2*f.backoff, fightBackoff), maxFightBackoff)
	f.until = now.Add(f.backoff)
	f.repairs = nil
	g.log.Error(why(), "retryIn", f.backoff.String())
	if g.Backoff != nil {
		g.Backoff(g.kind, reason)
	}
	return f.backoff
}

// lastOtherManager is the field manager other than warden that last
// wrote m, from its managedFields.
func lastOtherManager(m metav1.Object) string {
	name, at := "unknown", time.Time{}
	for _, e := range m.GetManagedFields() {
		if e.Manager == FieldManager || e.Time == nil {
			continue
		}
		if e.Time.After(at) || name == "unknown" {
			name, at = e.Manager, e.Time.Time
		}
	}
	return name
}

// OtherOwner says whether m carries the mark of an install other than
// owner (an object without a mark is no other install's).
func OtherOwner(m metav1.ObjectMeta, owner string) bool {
	o := m.Annotations[OwnerAnnotation]
	return o != "" && o != owner
}
