package app_test

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"
)

// startRotatable starts a standalone serve for a rotation test.
func startRotatable(t *testing.T, extra ...string) (data string, logs *syncBuffer) {
	t.Helper()
	data = filepath.Join(t.TempDir(), "data")
	_, logs = serveLogged(t, data, testkit.FreeAddr(t), append([]string{"--auto-rotate-root", "0"}, extra...)...)
	return data, logs
}

var (
	infoRoot = regexp.MustCompile(`(?m)^Root (\d) \(([^)]*)\):\n  Subject:     (.*)\n(?:  .*\n)*?  SHA-256:     (\S+)\n`)
	hexFP    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// TestCAInfoAndStatusAfterActivation: once the new root signs, 'ca info'
// shows both roots and which signs, the two roots have different names,
// 'ca rotate --status' calls the new root the signing one (not the old
// one "current"), and every fingerprint (ca info, --status, serve's log)
// is written the same way.
func TestCAInfoAndStatusAfterActivation(t *testing.T) {
	data, logs := startRotatable(t, "--rotation-grace", "0s")
	rotate(t, data, "activate")
	st := waitStatus(t, data, 10*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	code, info, errOut := run(t, "ca", "info", "--data-dir", data)
	if code != 0 {
		t.Fatalf("ca info: %d %s", code, errOut)
	}
	roots := infoRoot.FindAllStringSubmatch(info, -1)
	if len(roots) != 2 || roots[0][2] != "new root, signs" || roots[1][2] != "old root, trusted until retirement" {
		t.Fatalf("ca info after activation does not show the new root signing and the old one trusted:\n%s", info)
	}
	if !strings.HasPrefix(info, "Root rotation in progress: activated (target activated); see 'warden ca rotate --status'.\n") {
		t.Errorf("ca info does not say a rotation is in progress:\n%s", info)
	}
	newSubject, oldSubject := roots[0][3], roots[1][3]
	if newSubject == oldSubject || !strings.HasPrefix(newSubject, "CN=warden root CA 20") {
		t.Errorf("the roots are named %q and %q: want distinct names saying when each was made", newSubject, oldSubject)
	}
	newFP, oldFP := roots[0][4], roots[1][4]
	if !hexFP.MatchString(newFP) || !hexFP.MatchString(oldFP) {
		t.Fatalf("ca info fingerprints %q, %q: want lower-case hex", newFP, oldFP)
	}
	if !strings.Contains(st, "signing root: sha256 "+newFP+", expires ") || !strings.Contains(st, "old root:     sha256 "+oldFP+", expires ") || strings.Contains(st, "current") {
		t.Errorf("--status after activation, want the new root %s signing and the old one %s named as such:\n%s", newFP, oldFP, st)
	}
	if !strings.Contains(logs.String(), "rootSHA256="+oldFP+" ") {
		t.Errorf("serve's \"CA ready\" log does not name the root %s as ca info does:\n%s", oldFP, logs.String())
	}
}
