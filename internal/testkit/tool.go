package testkit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// RepoRoot is the warden checkout this package lives in.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Tool is a test dependency a hack/ script builds and caches (a real
// Vault, Istio's oracle): found through an environment variable when it
// is set, else built by the script on first use (minutes, once).
type Tool struct {
	Env    string // e.g. WARDEN_VAULT_BIN
	Script string // under hack/, e.g. vault-binary.sh
	What   string // for messages, e.g. "test Vault binary"

	once sync.Once
	path string
	err  error
}

// Path returns the tool's path, or fails the test saying how to get it.
func (tl *Tool) Path(t testing.TB) string {
	t.Helper()
	tl.once.Do(func() {
		if p := os.Getenv(tl.Env); p != "" {
			tl.path = p
			return
		}
		cmd := exec.Command(filepath.Join(RepoRoot(), "hack", tl.Script))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			tl.err = fmt.Errorf("hack/%s: %v\n%s", tl.Script, err, stderr.String())
			return
		}
		tl.path = strings.TrimSpace(string(out))
	})
	if tl.err != nil {
		t.Fatal(tl.err)
	}
	if _, err := os.Stat(tl.path); err != nil {
		t.Fatalf("%s: %v (unset %s to have hack/%s build it)", tl.What, err, tl.Env, tl.Script)
	}
	return tl.path
}
