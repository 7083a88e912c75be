package app_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestFederationRelationshipsReloaded: serve re-reads --federation-file
// when it changes, without a restart: a namespace added to a
// relationship gets the trust domain's bundle from the central SDS (it
// was PermissionDenied before), a file that no longer loads is logged and
// the relationships held stay, and a relationship removed from the file
// is handed out no more.
func TestFederationRelationshipsReloaded(t *testing.T) {
	dir, data, addr, peer := federationFixture(t)
	fedFile := filepath.Join(dir, "federation.yaml")
	relationship := func(namespaces string) []byte {
		return []byte(`trustDomains:
- trustDomain: partner.test
  bundleEndpointURL: https://` + peer.addr + `/bundle
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: "spiffe://partner.test/bundle-server"}
  trustDomainBundleFile: partner.pem
  namespaces: ` + namespaces + `
`)
	}
	if _, err := sdsBundles(t, addr, data, "other", "sleep", "spiffe://partner.test"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("namespace other before the edit: %v, want PermissionDenied", err)
	}

	os.WriteFile(fedFile, relationship("[default, other]"), 0o600)
	testkit.Eventually(t, 15*time.Second, func() error {
		got, err := sdsBundles(t, addr, data, "other", "sleep", "spiffe://partner.test")
		if err != nil {
			return err
		}
		if !ca.SameRoots(got["spiffe://partner.test"], peer.m.Roots) {
			return fmt.Errorf("namespace other gets %d roots of partner.test", len(got["spiffe://partner.test"]))
		}
		return nil
	})

	// A broken file changes nothing.
	os.WriteFile(fedFile, []byte("trustDomains:\n- trustDomain: partner.test\n  bundleEndpointURL: http://plain\n"), 0o600)
	time.Sleep(2500 * time.Millisecond) // the file is read every second
	if _, err := sdsBundles(t, addr, data, "other", "sleep", "spiffe://partner.test"); err != nil {
		t.Fatalf("a broken file dropped the relationship: %v", err)
	}

	// Removed: nobody gets the bundle.
	os.WriteFile(fedFile, []byte("trustDomains: []\n"), 0o600)
	testkit.Eventually(t, 15*time.Second, func() error {
		_, err := sdsBundles(t, addr, data, "default", "sleep", "spiffe://partner.test")
		if status.Code(err) != codes.PermissionDenied {
			return errors.New("namespace default still gets partner.test's bundle: " + strings.TrimSpace(fmt.Sprint(err)))
		}
		return nil
	})
}
