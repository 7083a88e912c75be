package rotation

import (
	"crypto/tls"
	"sync/atomic"

	"github.com/wardenmesh/warden/ca"
)

// servingSwitch issues the CA's serving certificate from the authority,
// or during a rotation from the material every client trusts longest
// (ca.Rotation.Serving).
type servingSwitch struct {
	main *ca.Authority
	cfg  ca.Config
	alt  atomic.Pointer[ca.Authority]
}

func (s *servingSwitch) set(rot *ca.Rotation) error {
	if rot.Phase != ca.PhasePublished && rot.Phase != ca.PhaseActivated {
		s.alt.Store(nil)
		return nil
	}
	a, err := ca.New(s.cfg, rot.Serving())
	if err != nil {
		return err
	}
	s.alt.Store(a)
	return nil
}

func (s *servingSwitch) pick() *ca.Authority {
	if a := s.alt.Load(); a != nil {
		return a
	}
	return s.main
}

func (s *servingSwitch) Material() *ca.Material { return s.pick().Material() }

func (s *servingSwitch) IssueServing(o ca.ServingOptions) (*tls.Certificate, error) {
	return s.pick().IssueServing(o)
}
