package app_test

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPolicyCheckReportsServiceEntryFields: policy check names the
// ServiceEntry fields the xDS compiler cannot honour, as warnings
// (--strict fails on them); the fields it compiles give none.
func TestPolicyCheckReportsServiceEntryFields(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.partner.test]
  location: MESH_INTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: api.partner.test, network: n2, locality: us/east}]
  subjectAltNames: ["spiffe://partner.test/ns/api/sa/api"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "policy", "check", "--strict", "-f", dir)
	want := `1 objects valid
port 8080: PERMISSIVE (default (no policy sets a mode))
xds: ServiceEntry default/ext: endpoints[0].network "n2" is not supported (multi-network); the endpoint is dialed directly at api.partner.test
xds: ServiceEntry default/ext: endpoints[0].locality "us/east" is not supported (no locality-aware load balancing); the endpoint is balanced with the others
`
	if code != 1 || out != want || stderr != "warden policy check: "+dir+": 2 warnings (--strict)\n" {
		t.Fatalf("policy check --strict: exit %d\n%s\nstderr %q\nwant exit 1:\n%s", code, out, stderr, want)
	}
}
