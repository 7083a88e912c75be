package app_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestServeMetricsCAUnavailable: a plugged-in intermediate expires under a
// running serve. A workload connected before the expiry asks again after
// it: the CA refuses (Unavailable), and the refusal is counted as
// citadel_server_csr_sign_err_count{error="unavailable"}; the signing
// certificate's expiry gauges say it expired.
//
// The third reason, sign_error, is what is left when the signing key
// itself fails (a faulty signer, the random source, an encoding error):
// warden's keys are in memory and checked against their certificate at
// load, so no real setup produces it without a fake signer.
func TestServeMetricsCAUnavailable(t *testing.T) {
	dir := t.TempDir()
	root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: "corp root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Organization: "cluster.local", CommonName: "short intermediate", TTL: 12 * time.Second, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := inter.Encode()
	plugged := filepath.Join(dir, "cacerts")
	writePluggedIn(t, plugged, f)
	data := filepath.Join(dir, "data")
	httpAddr := testkit.FreeAddr(t)
	addr, _ := serve(t, data, "--plugged-in-dir", plugged, "--http-listen", httpAddr)
	metricsURL := "http://" + httpAddr + "/metrics"
	tok, err := os.ReadFile(sleepTokenFile(t, dir, data))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	c, err := client.New(client.Config{Addr: addr, Roots: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sleep := "spiffe://cluster.local/ns/default/sa/sleep"
	ctx := context.Background()
	// The connection is made (and the CA's serving certificate checked)
	// while the intermediate is valid.
	if _, err := c.CreateCertificate(ctx, csrFor(t, sleep), 0, strings.TrimSpace(string(tok))); err != nil {
		t.Fatalf("before the expiry: %v", err)
	}
	before := scrape(t, metricsURL)
	if got, want := before["citadel_server_cert_chain_expiry_timestamp"], float64(inter.Cert.NotAfter.Unix()); got != want {
		t.Errorf("cert chain expiry %v, the intermediate's is %v", got, want)
	}
	time.Sleep(time.Until(inter.Cert.NotAfter) + time.Second)

	_, err = c.CreateCertificate(ctx, csrFor(t, sleep), 0, strings.TrimSpace(string(tok)))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "ca: CA not ready: signing certificate expired at "+inter.Cert.NotAfter.UTC().Format(time.RFC3339)) {
		t.Fatalf("after the expiry: %v, want Unavailable: signing certificate expired", err)
	}
	after := scrape(t, metricsURL)
	for series, want := range map[string]float64{
		`citadel_server_csr_sign_err_count{error="unavailable"}`: 1, "citadel_server_csr_count": 1, "citadel_server_success_cert_issuance_count": 0,
		`citadel_server_csr_sign_err_count{error="invalid_ttl"}`: 0, `citadel_server_csr_sign_err_count{error="sign_error"}`: 0,
	} {
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s moved by %v, want %v", series, got, want)
		}
	}
	if got := after["citadel_server_cert_chain_expiry_seconds"]; got >= 0 {
		t.Errorf("citadel_server_cert_chain_expiry_seconds = %v once the intermediate expired, want negative", got)
	}
}
