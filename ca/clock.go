package ca

import "time"

// Clock tells the time. Tests pass a fake one; see WithClock-style Config
// fields throughout warden.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

var _ Clock = SystemClock{}
