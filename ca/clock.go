package ca

import "time"

// Clock tells the time: warden's one clock interface (the CA, tokens,
// the SDS cache, OIDC discovery). Tests pass a fake one (catest.Clock)
// through the Config fields that take it.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

var _ Clock = SystemClock{}

// Timer is a Clock that can also wait; schedules (intermediate renewal,
// SVID rotation) need it. SystemClock and catest.Clock implement it.
type Timer interface {
	Clock
	After(d time.Duration) <-chan time.Time
}

// After is time.After.
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

var _ Timer = SystemClock{}
