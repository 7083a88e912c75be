package app_test

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRotateActivateSaysWhatComesNext: 'ca rotate activate' that must
// wait returns at once, and says that the server activates by itself,
// how to wait for it and how to activate now.
func TestRotateActivateSaysWhatComesNext(t *testing.T) {
	data, _ := startRotatable(t, "--rotation-grace", "1h")
	out := rotate(t, data, "activate")
	for _, want := range []string{
		"phase: published (target activated)\n",
		"next: the server activates by itself once the wait above is over; nothing more to run.",
		"'warden ca rotate --data-dir " + data + " --wait activate' waits for it",
		"'warden ca rotate --data-dir " + data + " --force activate' activates now",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("activate does not say %q:\n%s", want, out)
		}
	}
}

// TestRotateWait: with --wait, 'ca rotate activate' returns once the
// server activated, with a progress line while it waits; a wait longer
// than --timeout fails, and says that the server carries on.
func TestRotateWait(t *testing.T) {
	data, _ := startRotatable(t, "--rotation-grace", "3s")
	code, out, errOut := run(t, "ca", "rotate", "--data-dir", data, "--wait", "--timeout", "30s", "activate")
	if code != 0 || !strings.Contains(out, "phase: activated (target activated)") {
		t.Fatalf("activate --wait: exit %d\n%s%s", code, out, errOut)
	}
	if !regexp.MustCompile(`(?m)^warden ca rotate: published; activation waits until \S+ \(--rotation-grace after publishing\)`).MatchString(errOut) {
		t.Fatalf("activate --wait shows no progress:\n%s", errOut)
	}
	start := time.Now()
	code, out, errOut = run(t, "ca", "rotate", "--data-dir", data, "--wait", "--timeout", "2s", "retire")
	if code != 1 || !strings.Contains(errOut, "timed out after 2s waiting for the rotation to retire: it is activated, and retirement waits until ") || !strings.Contains(errOut, "The server carries on by itself; follow it with 'warden ca rotate --data-dir "+data+" --status'") {
		t.Fatalf("retire --wait --timeout 2s: exit %d\n%s%s", code, out, errOut)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("--timeout 2s returned after %s", d)
	}
}
