package app_test

import (
	"strings"
	"testing"
)

// TestProxyConfigInterceptionMode: warden proxy-config shows a TPROXY
// sidecar what warden serve sends it (transparent virtual listeners,
// original_src), a REDIRECT one neither, and refuses NONE as serve does.
func TestProxyConfigInterceptionMode(t *testing.T) {
	const node = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	listeners := func(extra ...string) (int, string, string) {
		args := append([]string{"proxy-config", "--config-dir", "../../docs/examples/flaskapp", "--node", node, "-o", "json"}, extra...)
		return run(t, append(args, "listeners")...)
	}
	code, tproxy, stderr := listeners("--interception-mode", "TPROXY")
	if code != 0 || strings.Count(tproxy, `"transparent": true`) != 2 || !strings.Contains(tproxy, "envoy.filters.listener.original_src") {
		t.Fatalf("TPROXY: exit %d, want virtualOutbound and virtualInbound transparent and original_src:\n%s%s", code, tproxy, stderr)
	}
	code, redirect, stderr := listeners()
	if code != 0 || strings.Contains(redirect, `"transparent"`) || strings.Contains(redirect, "original_src") || !strings.Contains(redirect, "virtualInbound") {
		t.Fatalf("REDIRECT (the default): exit %d:\n%s%s", code, redirect, stderr)
	}
	if code, _, stderr := listeners("--interception-mode", "NONE"); code == 0 || !strings.Contains(stderr, `INTERCEPTION_MODE "NONE" (a sidecar without iptables) is not served`) {
		t.Fatalf("NONE: exit %d:\n%s", code, stderr)
	}
}
