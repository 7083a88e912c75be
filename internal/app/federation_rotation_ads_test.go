package app_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestFederationActivationWaitsForEnvoyInlineRoots: an Envoy sidecar of
// a federating namespace (default) on ADS validates peers with the
// SPIFFE validator, whose bundles are inline in its clusters and
// listeners. After 'ca rotate publish' it ACKs the new ROOTCA but not
// the clusters and listeners carrying the new root: activation waits,
// and 'ca rotate --status' says what the stream lacks; once it ACKs
// them, activation proceeds.
func TestFederationActivationWaitsForEnvoyInlineRoots(t *testing.T) {
	_, data, addr, _ := federationFixture(t, "--config-dir", "../../docs/examples/flaskapp", "--push-debounce", "20ms",
		"--rotation-grace", "0s", "--auto-rotate-root", "0")
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "flaskapp")
	if code != 0 {
		t.Fatal(stderr)
	}
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootPEM)
	ads, _ := openADS(t, addr, pool, tok)
	const nodeID = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	node := &corev3.Node{Id: nodeID}
	for _, typ := range []string{resource.ClusterType, resource.ListenerType, resource.SecretType} {
		subscribeAndACK(t, ads, node, typ)
	}

	rotate(t, data, "publish")
	pushed := map[string]*discovery.DiscoveryResponse{}
	for len(pushed) < 3 {
		r, err := ads.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains([]string{resource.ClusterType, resource.ListenerType, resource.SecretType}, r.TypeUrl) {
			t.Fatalf("publish pushed %s", r.TypeUrl)
		}
		pushed[r.TypeUrl] = r
	}
	ack := func(r *discovery.DiscoveryResponse) {
		t.Helper()
		if err := ads.Send(&discovery.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}
	ack(pushed[resource.SecretType])
	rotate(t, data, "activate")
	out := waitStatus(t, data, 10*time.Second, "activation to wait for the federating proxy's clusters and listeners", func(s string) bool {
		return strings.Contains(s, "ads: 0 of 1 hold the new root") &&
			strings.Contains(s, "missing: "+nodeID+" (ads stream ") && strings.Contains(s, ": clusters and listeners not yet ACKed with the new root)")
	})
	if phaseLine.FindStringSubmatch(out)[1] != "published" {
		t.Fatalf("activated although the federating proxy has not ACKed the new root in its validator:\n%s", out)
	}
	ack(pushed[resource.ClusterType])
	ack(pushed[resource.ListenerType])
	waitStatus(t, data, 10*time.Second, "activation once the proxy ACKed its clusters and listeners", func(s string) bool {
		return phaseLine.FindStringSubmatch(s)[1] == "activated"
	})
}
