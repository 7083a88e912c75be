package app

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

// TestClientGoLogsFollowTheLatestServe: client-go's logger, set once per
// process, writes to the logger of the serve that started last, keeping
// the values a client-go component added before the switch.
func TestClientGoLogsFollowTheLatestServe(t *testing.T) {
	var first, second bytes.Buffer
	logClientGoTo(slog.New(slog.NewTextHandler(&first, nil)))
	informer := klog.Background().WithName("informer").WithValues("resource", "secrets")
	informer.Info("listed")
	logClientGoTo(slog.New(slog.NewTextHandler(&second, nil)))
	informer.Info("watching")
	if !strings.Contains(first.String(), "msg=listed") || strings.Contains(first.String(), "watching") {
		t.Fatalf("first logger got:\n%s", first.String())
	}
	if got := second.String(); !strings.Contains(got, "msg=watching") || !strings.Contains(got, "resource=secrets") || strings.Contains(got, "listed") {
		t.Fatalf("second logger got:\n%s", got)
	}
}

// TestClientGoRepeatedErrorsLimited: client-go's same error, logged at
// every retry, passes once a minute with the count of those dropped;
// another error, and anything below ERROR, pass.
func TestClientGoRepeatedErrorsLimited(t *testing.T) {
	l := &repeatLimit{every: time.Minute, seen: map[string]*repeat{}}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var passed []string
	for i := range 60 { // every 2 s for two minutes
		at := t0.Add(time.Duration(i) * 2 * time.Second)
		if pass, dropped := l.note("Error retrieving lease lock", at); pass {
			passed = append(passed, fmt.Sprintf("%s dropped=%d", at.Sub(t0), dropped))
		}
	}
	if want := []string{"0s dropped=0", "1m0s dropped=29"}; !slices.Equal(passed, want) {
		t.Errorf("passed %v, want %v", passed, want)
	}
	if pass, _ := l.note("another error", t0.Add(time.Second)); !pass {
		t.Error("another error was dropped")
	}

	var out bytes.Buffer
	logClientGoTo(slog.New(slog.NewTextHandler(&out, nil)))
	lg := klog.Background()
	for range 5 {
		lg.Error(errors.New("connection refused"), "Error retrieving lease lock in a test")
		lg.Info("retrying in a test")
	}
	if n := strings.Count(out.String(), "Error retrieving lease lock in a test"); n != 1 {
		t.Errorf("%d error lines for five repeats, want 1:\n%s", n, out.String())
	}
	if n := strings.Count(out.String(), "retrying in a test"); n != 5 {
		t.Errorf("%d info lines, want 5", n)
	}
}
