package app_test

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestAgentMetricsRenewalFailures: with the CA stopped, the agent's
// renewals fail and warden_agent_svid_rotation_failures_total counts
// them; no rotation is counted while the CA is down.
func TestAgentMetricsRenewalFailures(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, stopCA := serve(t, data)
	tokFile := sleepTokenFile(t, dir, data)
	out, metricsAddr := filepath.Join(dir, "out"), testkit.FreeAddr(t)
	metricsURL := "http://" + metricsAddr + "/metrics"
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tokFile,
			"--sds-socket", filepath.Join(dir, "sds.sock"), "--workload-api-socket", "", "--output-dir", out, "--ttl", "4s", "--metrics-listen", metricsAddr}, &logs, &logs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFile(t, filepath.Join(out, "cert-chain.pem"))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(metricsURL)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent metrics never served: %v\n%s", err, logs.String())
		}
	}
	m := scrape(t, metricsURL)
	if m["warden_agent_svids"] != 1 || m["warden_agent_svid_rotation_failures_total"] != 0 {
		t.Fatalf("with the CA up: svids %v (want 1), rotation failures %v (want 0)\n%s", m["warden_agent_svids"], m["warden_agent_svid_rotation_failures_total"], logs.String())
	}

	if code := stopCA(); code != 0 {
		t.Fatalf("warden serve exited %d", code)
	}
	// A renewal answered just before the stop may still be counted a
	// moment after it: the baseline is taken once that has settled.
	time.Sleep(500 * time.Millisecond)
	down := scrape(t, metricsURL)
	// A 4 s certificate is renewed at about half its life: the attempt
	// fails with the CA gone.
	deadline := time.Now().Add(15 * time.Second)
	for m = down; m["warden_agent_svid_rotation_failures_total"] < 1; m = scrape(t, metricsURL) {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal failure counted with the CA stopped: %v\n%s", m["warden_agent_svid_rotation_failures_total"], logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if m["warden_agent_svid_rotations_total"] != down["warden_agent_svid_rotations_total"] {
		t.Errorf("rotations moved from %v to %v with the CA stopped", down["warden_agent_svid_rotations_total"], m["warden_agent_svid_rotations_total"])
	}
}
