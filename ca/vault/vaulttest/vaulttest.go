// Package vaulttest runs a real Vault server for tests: hack/vaultbin
// (Vault's core, HTTP API, PKI engine, AppRole and Kubernetes auth), built
// and cached by hack/vault-binary.sh, serving HTTPS on loopback with its
// storage in a temporary directory. A test can kill it (an outage) and
// restart it on the same address and storage (recovery), and can run the
// setup steps of docs/vault.md against it verbatim.
package vaulttest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"
)

// BinaryEnv names the variable holding the test Vault's path; when it is
// unset, Binary runs hack/vault-binary.sh, which builds it once.
const BinaryEnv = "WARDEN_VAULT_BIN"

// Server is a running test Vault.
type Server struct {
	Addr      string // https://127.0.0.1:<port>
	RootToken string // initial root token (this is a throwaway test server)
	CACert    string // PEM file of the CA of Vault's TLS certificate
	Dir       string // storage, unseal key and TLS files

	t      testing.TB
	listen string
	mu     sync.Mutex
	cmd    *exec.Cmd
	log    *syncBuffer
}

// syncBuffer is safe for the process's writer and a test.
type syncBuffer = testkit.Buffer

// RepoRoot is the warden checkout.
func RepoRoot() string { return testkit.RepoRoot() }

var vaultBin = testkit.Tool{Env: BinaryEnv, Script: "vault-binary.sh", What: "test Vault binary"}

// Binary returns the test Vault's path: $WARDEN_VAULT_BIN, or what
// hack/vault-binary.sh prints (building it on first use; minutes).
func Binary(t testing.TB) string {
	t.Helper()
	return vaultBin.Path(t)
}

// Start runs a fresh Vault; it is killed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	listen := testkit.FreeAddr(t)
	s := &Server{t: t, listen: listen, Dir: t.TempDir()}
	s.start()
	t.Cleanup(func() { s.Stop() })
	return s
}

func (s *Server) start() {
	t := s.t
	t.Helper()
	cmd := exec.Command(Binary(t), "-listen", s.listen, "-data", s.Dir, "-tls")
	log := &syncBuffer{}
	s.mu.Lock()
	s.log = log
	s.mu.Unlock()
	cmd.Stderr = log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("test Vault not ready after 60s:\n%s", log)
	}
	var ready struct {
		Addr      string `json:"addr"`
		RootToken string `json:"root_token"`
		CACert    string `json:"ca_cert"`
	}
	if err := json.Unmarshal([]byte(line), &ready); err != nil || ready.Addr == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("test Vault: bad ready line %q (%v):\n%s", line, err, log)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	s.Addr, s.RootToken, s.CACert = ready.Addr, ready.RootToken, ready.CACert
}

// Stop kills Vault abruptly (SIGKILL), as a crash or a network partition
// would look to warden. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// Restart starts Vault again on the same address and storage: the same
// root, mounts, roles and tokens, unsealed with the stored key.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Seal seals Vault (sys/seal): it keeps running and answers every
// request but the seal status with 503 "Vault is sealed", as after a
// restart that nobody unsealed.
func (s *Server) Seal(t testing.TB) {
	t.Helper()
	s.API(t, "PUT", "/v1/sys/seal", nil)
}

// Unseal unseals Vault with the key stored when it was initialized.
func (s *Server) Unseal(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, "init.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		UnsealKey []byte `json:"unseal_key"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	out := s.API(t, "PUT", "/v1/sys/unseal", map[string]any{"key": hex.EncodeToString(st.UnsealKey)})
	if out["sealed"] != false {
		t.Fatalf("Vault is still sealed: %v", out)
	}
}

// Env is the environment a Vault client (curl in the docs, warden) needs
// to reach this server as root.
func (s *Server) Env() []string {
	return []string{"VAULT_ADDR=" + s.Addr, "VAULT_TOKEN=" + s.RootToken, "VAULT_CACERT=" + s.CACert}
}

// DocPath is docs/vault.md.
func DocPath() string { return filepath.Join(RepoRoot(), "docs", "vault.md") }

// Steps returns the shell blocks of a Markdown document tagged with one of
// the given step names (a fence line "```sh <step>"), in document order.
func Steps(doc []byte, steps ...string) (string, error) {
	want := map[string]bool{}
	for _, s := range steps {
		want[s] = true
	}
	found := map[string]bool{}
	var out strings.Builder
	in, keep := false, false
	for i, line := range strings.Split(string(doc), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && strings.HasPrefix(trimmed, "```"):
			in = true
			f := strings.Fields(strings.TrimPrefix(trimmed, "```"))
			keep = len(f) == 2 && f[0] == "sh" && want[f[1]]
			if keep {
				found[f[1]] = true
				fmt.Fprintf(&out, "# --- docs step %s (line %d)\n", f[1], i+1)
			}
		case in && trimmed == "```":
			in = false
		case in && keep:
			out.WriteString(line + "\n")
		}
	}
	for _, s := range steps {
		if !found[s] {
			return "", fmt.Errorf("no block tagged %q", s)
		}
	}
	return out.String(), nil
}

// RunDoc runs the tagged steps of docs/vault.md with bash (errexit,
// nounset, pipefail) in dir, against s as root plus extra environment,
// and fails the test on any error.
func (s *Server) RunDoc(t testing.TB, dir string, extraEnv []string, steps ...string) {
	t.Helper()
	doc, err := os.ReadFile(DocPath())
	if err != nil {
		t.Fatal(err)
	}
	script, err := Steps(doc, steps...)
	if err != nil {
		t.Fatalf("docs/vault.md: %v", err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), s.Env()...), extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/vault.md steps %v failed: %v\n%s\nscript:\n%s\nvault log:\n%s", steps, err, out, script, s.Log())
	}
}

// Log is what Vault wrote to stderr since it last started.
func (s *Server) Log() string {
	s.mu.Lock()
	log := s.log
	s.mu.Unlock()
	if log == nil {
		return ""
	}
	return log.String()
}

// API calls Vault's HTTP API as root, fails the test unless the answer is
// 2xx, and returns the decoded JSON body (nil when empty).
func (s *Server) API(t testing.TB, method, path string, body any) map[string]any {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	pemCA, err := os.ReadFile(s.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	req, err := http.NewRequest(method, s.Addr+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", s.RootToken)
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("Vault %s %s: %d %v", method, path, resp.StatusCode, out)
	}
	return out
}
