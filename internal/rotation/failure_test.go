package rotation

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestStepFailureLoggedOncePerMinute: a step that fails at every retry
// (the loop retries every second) is logged at once, then once a minute
// while it fails the same way, not every second; --status shows it; once
// the step goes through the status is clean again.
func TestStepFailureLoggedOncePerMinute(t *testing.T) {
	f := newRotatorFixture(t)
	var logs testkit.Buffer
	f.r.log = slog.New(slog.NewTextHandler(&logs, nil))
	var broken atomic.Bool
	broken.Store(true)
	newCA := f.r.newCA
	f.r.newCA = func() (*ca.Material, error) {
		if broken.Load() {
			return nil, errors.New("the key generator is unplugged")
		}
		return newCA()
	}
	f.clock.Add(time.Minute) // the new root must outlive the old one
	if err := f.r.Request(ca.PhasePrepared, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	errors := func() int { return strings.Count(logs.String(), "level=ERROR") }

	time.Sleep(2500 * time.Millisecond) // three tries
	if n := errors(); n != 1 {
		t.Fatalf("a step failing every second for 2.5 s was logged %d times, want once:\n%s", n, logs.String())
	}
	var st strings.Builder
	f.r.Status().Print(&st)
	if !strings.Contains(st.String(), "error: ") || !strings.Contains(st.String(), "the key generator is unplugged") {
		t.Fatalf("the status does not show the failing step:\n%s", st.String())
	}
	f.clock.Add(time.Minute)
	time.Sleep(1500 * time.Millisecond)
	if n := errors(); n != 2 {
		t.Fatalf("a step still failing a minute later was logged %d times in all, want twice:\n%s", n, logs.String())
	}
	broken.Store(false)
	for deadline := time.Now().Add(5 * time.Second); f.r.Status().Phase != "prepared"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the step did not go through once it could:\n%s", logs.String())
		}
	}
	st.Reset()
	f.r.Status().Print(&st)
	if strings.Contains(st.String(), "error: ") {
		t.Fatalf("the status still shows the error after the step went through:\n%s", st.String())
	}
}

// TestAbortDropsAFailingRequest: a request whose first step fails
// (nothing prepared yet) can be dropped with abort, which ends the
// retries and clears the error.
func TestAbortDropsAFailingRequest(t *testing.T) {
	f := newRotatorFixture(t)
	f.r.newCA = func() (*ca.Material, error) { return nil, errors.New("the key generator is unplugged") }
	if err := f.r.Request(ca.PhasePublished, false); err != nil {
		t.Fatal(err)
	}
	if err := f.r.Step(context.Background()); err == nil || f.r.Status().StepError != "the key generator is unplugged" {
		t.Fatalf("the failing step: %v, status %+v", err, f.r.Status())
	}
	if err := f.r.Abort(); err != nil {
		t.Fatal(err)
	}
	if st := f.r.Status(); st.Phase != "none" || st.Target != "none" || st.StepError != "" {
		t.Fatalf("after abort: %+v", st)
	}
	if err := f.r.Step(context.Background()); err != nil {
		t.Fatalf("a step after the abort: %v", err)
	}
	if err := f.r.Abort(); err == nil || err.Error() != "ca: rotation: no rotation in progress" {
		t.Fatalf("a second abort: %v", err)
	}
}
