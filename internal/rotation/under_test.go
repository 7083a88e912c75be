package rotation

import (
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// TestUpstreamUnder: the root the renewer must ask under is the state's
// signing root while there is no intermediate (a start mid-rotation)
// and, on a replica that follows the leader, always; otherwise, and
// before any state, the upstream chooses.
func TestUpstreamUnder(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(time.Now())
	oldRoot := catest.Root(t, ca.CAOptions{Clock: clock, CommonName: "old root"})
	newRoot := catest.Root(t, ca.CAOptions{Clock: clock, CommonName: "new root"})
	cur := oldRoot // any intermediate: Under only asks whether there is one
	published := UpstreamState{Signing: oldRoot.Roots[0], Next: newRoot.Roots[0], PublishedAt: clock.Now()}
	for _, tc := range []struct {
		name    string
		found   bool
		leading func() bool // nil: standalone
		cur     *ca.Material
		want    *ca.Material
	}{
		{"standalone, start mid-rotation", true, nil, nil, oldRoot},
		{"standalone, an intermediate signs", true, nil, cur, nil},
		{"standalone, first start", false, nil, nil, nil},
		{"follower, start mid-rotation", true, func() bool { return false }, nil, oldRoot},
		{"follower, an intermediate signs", true, func() bool { return false }, cur, oldRoot},
		{"leader, start mid-rotation", true, func() bool { return true }, nil, oldRoot},
		{"leader, an intermediate signs", true, func() bool { return true }, cur, nil},
		{"follower, no state saved yet", false, func() bool { return false }, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &memUpstreamStore{st: published, found: tc.found}
			u, err := NewUpstream(UpstreamConfig{Authority: catest.Authority(t, nil, catest.WithClock(clock)), Clock: clock, Store: store, Leading: tc.leading})
			if err != nil {
				t.Fatal(err)
			}
			got := u.Under(tc.cur)
			switch {
			case tc.want == nil && got != nil:
				t.Fatalf("Under = %s, want nil (the upstream's choice)", got.Subject)
			case tc.want != nil && (got == nil || !got.Equal(tc.want.Roots[0])):
				t.Fatalf("Under = %v, want the signing root %s", got, tc.want.Roots[0].Subject)
			}
		})
	}
}
