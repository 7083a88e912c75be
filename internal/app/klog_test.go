package app

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

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
