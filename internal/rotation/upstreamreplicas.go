package rotation

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// An Upstream as one of several replicas (UpstreamConfig.Leading): the
// leader's steps are Upstream's own; what follows is how every replica
// follows the state the leader saved.

// leads says whether this replica takes the steps: always, but with
// several replicas only while it leads.
func (u *Upstream) leads() bool { return u.cfg.Leading == nil || u.cfg.Leading() }

// admitFollowerLocked is Admit on a replica that follows the leader's
// saved state: an intermediate under the root the leader signs under is
// activated; one under any other root is held back until the leader
// activates that root (once every replica's consumers hold it), unless
// forced (this replica's current intermediate is about to expire).
// notUnder is why the upstream signed m under its default issuer, not
// under the signing root (Under), if it did.
func (u *Upstream) admitFollowerLocked(m *ca.Material, root *x509.Certificate, force bool, notUnder string) error {
	if !root.Equal(u.st.Signing) {
		if !force {
			why := "an intermediate under a root the leader does not sign under is held back until the leader activates that root (once every replica's consumers hold it); the current intermediate keeps signing"
			u.setWaitingLocked(why)
			return fmt.Errorf("%w: %s", ca.ErrHeld, why)
		}
		switch {
		case u.st.Next != nil && root.Equal(u.st.Next):
			total, missing := u.missing(ca.Fingerprint(root), u.st)
			u.cfg.Log.Error("ACTIVATING THE NEW ROOT ALTHOUGH NOT EVERY CONSUMER HOLDS IT: this replica's current intermediate is about to expire (or it has none: it is starting) and "+u.cfg.Describe+" signs only under the new root, which the leader has not activated yet; consumers without it refuse the certificates signed from now on until they get the new bundle",
				"newRootSHA256", ca.Fingerprint(root), "lacking", fmt.Sprintf("%d of %d of this replica's consumers: %s", len(missing), total, strings.Join(first(missing, 10), ", ")), "notUnderSigningRoot", notUnder)
		case u.oldLocked(root) >= 0:
			u.cfg.Log.Warn("this replica's current intermediate is about to expire and the upstream signs under a root warden is retiring, which every consumer still holds: it signs under it", "rootSHA256", ca.Fingerprint(root))
		default:
			u.cfg.Log.Error("ACTIVATING A NEW ROOT WITHOUT PUBLISHING IT FIRST: "+u.cfg.Describe+" signs only under a root the leader has not published, and this replica's current intermediate is about to expire (or it has none); consumers without the new root refuse the certificates signed from now on until they get the new bundle",
				"newRootSHA256", ca.Fingerprint(root), "newRoot", root.Subject.String(), "notUnderSigningRoot", notUnder)
		}
	}
	c := *m
	c.Roots = ca.MergeRoots(u.st.Roots(), []*x509.Certificate{root})
	return u.cfg.Authority.Activate(&c)
}

// stepReplica follows the saved state (a replica that does not lead, or
// one that starts to: it resumes from the state, or saves its own when
// there is none yet).
func (u *Upstream) stepReplica(leads bool) {
	if !leads || !u.led {
		u.follow()
	}
	if leads && !u.led {
		u.lastPoll, u.lastReport = time.Time{}, "" // read the issuers and report at once
	}
	u.led = leads
	if leads {
		u.mu.Lock()
		if u.dirty {
			u.saveLocked()
		}
		u.mu.Unlock()
	}
}

// follow takes up the state the leader saved, if any.
func (u *Upstream) follow() {
	if u.cfg.Store == nil {
		return
	}
	st, found, err := u.cfg.Store.Load()
	u.followLog.note(u.cfg.Log, u.clock.Now(), err, "upstream root rotation: reading the state the leader saved; this replica keeps the bundle it has until it can")
	if err != nil || !found {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	before, phase := u.st.Roots(), u.phaseLocked()
	u.st, u.loaded, u.shared, u.dirty = st, true, true, false
	if ca.SameRoots(before, st.Roots()) {
		return
	}
	if p := u.phaseLocked(); p != phase {
		u.cfg.Log.Info("upstream root rotation: following the leader", "phase", PhaseName(p), "signingRootSHA256", ca.Fingerprint(st.Signing))
	}
	if err := u.applyLocked(); err != nil {
		u.cfg.Log.Error("upstream root rotation: could not apply the new bundle", "error", err.Error())
	}
}

// switchSigning has the renewer offer (or ask for) an intermediate under
// the root the state signs under, while this replica signs under
// another: the leader activated it (the renewer asks the upstream at
// most once every --vault-min-intermediate-ttl tenth).
func (u *Upstream) switchSigning() {
	cur := u.cfg.Authority.Material()
	if cur == nil {
		return
	}
	a, err := cur.Anchor()
	u.mu.Lock()
	signing := u.st.Signing
	u.mu.Unlock()
	if err == nil && signing != nil && !a.Equal(signing) {
		u.kick()
	}
}
