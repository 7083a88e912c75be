package app_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/app"
)

// vaultSetup starts a real Vault and runs docs/vault.md's steps with the
// given auth step; it returns the server and the directory holding the
// files the steps wrote (vault-root.pem, warden-role-id, ...).
func vaultSetup(t *testing.T, authStep string) (*vaulttest.Server, string) {
	t.Helper()
	v := vaulttest.Start(t)
	dir := t.TempDir()
	v.RunDoc(t, dir, nil, "setup", "pki", "policy", authStep)
	return v, dir
}

func approleFlags(v *vaulttest.Server, dir string) []string {
	role, _ := os.ReadFile(filepath.Join(dir, "warden-role-id"))
	return []string{"--ca-upstream", "vault", "--vault-addr", v.Addr, "--vault-cacert", v.CACert,
		"--vault-auth", "approle", "--vault-approle-role-id", strings.TrimSpace(string(role)),
		"--vault-approle-secret-id-file", filepath.Join(dir, "warden-secret-id")}
}

// certRequest gets a workload certificate from the CA at addr and returns
// its chain (leaf first, root last).
func certRequest(t *testing.T, addr, data, vaultRoot, out string) []*x509.Certificate {
	t.Helper()
	code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep")
	if code != 0 {
		t.Fatalf("token: %d %s", code, stderr)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--root-cert", vaultRoot, "--token-file", tokFile, "--out", out, "--overwrite")
	if code != 0 || !strings.HasPrefix(stdout, "spiffe://cluster.local/ns/default/sa/sleep\n") {
		t.Fatalf("cert request: %d\n%s%s", code, stdout, stderr)
	}
	// cert-chain.pem is the leaf and intermediates, root-cert.pem the root.
	b, err := os.ReadFile(filepath.Join(out, "cert-chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := os.ReadFile(filepath.Join(out, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.ParseCerts(append(b, r...))
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// TestServeVaultUpstream: warden serve gets its intermediate from a real
// Vault set up by docs/vault.md (AppRole), issues workload certificates
// that chain to Vault's root (openssl agrees), exports the time to the
// intermediate's expiry, keeps signing while Vault is killed, and renews
// once Vault is back, without a restart.
func TestServeVaultUpstream(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	data := filepath.Join(t.TempDir(), "data")
	vaultRoot := filepath.Join(dir, "vault-root.pem")
	httpAddr := testkit.FreeAddr(t)
	addr, logs := serveVault(t, data, httpAddr, approleFlags(v, dir))
	for _, want := range []string{`msg="logged in to Vault"`, `source="intermediate signed by Vault at ` + v.Addr + ` (PKI mount pki)"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	chain := certRequest(t, addr, data, vaultRoot, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "first leaf", chain, vaultRoot)
	catest.OpenSSLVerify(t, pemChain(chain))

	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	left := metricValue(t, string(body), "warden_ca_intermediate_expiry_seconds")
	if left <= 0 || left > 40 {
		t.Errorf("warden_ca_intermediate_expiry_seconds = %g, want (0, 40]", left)
	}

	waitFor(t, logs, `msg="intermediate CA activated"`, 2) // a scheduled renewal
	v.Stop()
	waitFor(t, logs, "intermediate CA renewal failed; signing continues with the current one", 1)
	during := certRequest(t, addr, data, vaultRoot, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "leaf signed while Vault is down", during, vaultRoot)

	activated := strings.Count(logs.String(), `msg="intermediate CA activated"`)
	v.Restart()
	waitFor(t, logs, `msg="intermediate CA activated"`, activated+1)
	after := certRequest(t, addr, data, vaultRoot, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "leaf after Vault's restart", after, vaultRoot)
	if after[1].Equal(during[1]) {
		t.Error("the leaf after the restart has the intermediate from before it")
	}
	verifyChain(t, "leaf from the outage, after the restart", during, vaultRoot)
	// The renewals and the failures during the outage are counted.
	resp, err = http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	renewed, failed := metricValue(t, string(body), "warden_vault_renewals_total"), metricValue(t, string(body), "warden_vault_renewal_failures_total")
	if renewed < float64(activated+1) || failed < 1 {
		t.Errorf("warden_vault_renewals_total %g (want at least %d), warden_vault_renewal_failures_total %g (want at least 1)", renewed, activated+1, failed)
	}
	if logged := logs.String(); strings.Contains(logged, "hvs.") || strings.Contains(logged, "PRIVATE KEY") {
		t.Errorf("a token or key was logged:\n%s", logged)
	}
}

// TestServeVaultRefusesBadCredentials: a wrong AppRole, a revoked token,
// a wrong Kubernetes role, a wrong mount, address or CA certificate stop
// warden serve at startup with the whole message each gets (Vault's
// reason and what to fix), before any CA listens.
func TestServeVaultRefusesBadCredentials(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	v.RunDoc(t, dir, nil, "setup", "token")
	tok, _ := os.ReadFile(filepath.Join(dir, "warden-token"))
	v.API(t, "POST", "/v1/auth/token/revoke", map[string]any{"token": strings.TrimSpace(string(tok))})
	revoked := filepath.Join(dir, "revoked-token")
	os.WriteFile(revoked, tok, 0o600)
	v.RunDoc(t, dir, nil, "setup", "token") // a valid warden-token again
	jwt := filepath.Join(dir, "jwt")
	os.WriteFile(jwt, []byte("not.a.jwt"), 0o600)
	base := []string{"--ca-upstream", "vault", "--vault-addr", v.Addr, "--vault-cacert", v.CACert}
	secretFile := filepath.Join(dir, "warden-secret-id")
	approle := []string{"--vault-auth", "approle", "--vault-approle-role-id", strings.TrimSpace(readFile(t, filepath.Join(dir, "warden-role-id"))), "--vault-approle-secret-id-file", secretFile}
	closed := testkit.FreeAddr(t)
	plainAddr := strings.Replace(v.Addr, "https://", "http://", 1)
	vaultRoot := filepath.Join(dir, "vault-root.pem")
	// The operator mistakes of issue #20, each with the message it gets.
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"wrong role ID", []string{"--vault-auth", "approle", "--vault-approle-role-id", "nope", "--vault-approle-secret-id-file", secretFile},
			"warden serve: vault: approle auth at auth/approle: login refused (auth/approle/login: 400 invalid role or secret ID): the role ID or the secret ID is wrong, or the secret ID expired or was used up (secret_id_ttl, secret_id_num_uses): write a new secret ID to " + secretFile + " (read again at each login)\n"},
		{"revoked token", []string{"--vault-auth", "token", "--vault-token-file", revoked},
			"warden serve: vault: token auth: Vault refused the token (auth/token/lookup-self: 403 permission denied; invalid token); is it revoked or expired? Write a new one to " + revoked + " (a running warden reads it again every second)\n"},
		{"sign path outside the policy", []string{"--vault-auth", "token", "--vault-token-file", filepath.Join(dir, "warden-token"), "--vault-sign-path", "pki/root/sign-self-issued"},
			"warden serve: vault: sign intermediate at pki/root/sign-self-issued: 403 permission denied: warden's Vault token may not write pki/root/sign-self-issued; check the PKI mount (--vault-pki-mount pki, --vault-sign-path) and that warden's policy allows update there (docs/vault.md, Policy)\n"},
		{"wrong PKI mount", append([]string{"--vault-pki-mount", "pki-typo"}, approle...),
			"warden serve: vault: sign intermediate at pki-typo/root/sign-intermediate: 403 permission denied: warden's Vault token may not write pki-typo/root/sign-intermediate; check the PKI mount (--vault-pki-mount pki-typo, --vault-sign-path) and that warden's policy allows update there (docs/vault.md, Policy)\n"},
		{"wrong auth mount", append([]string{"--vault-approle-mount", "approle-typo"}, approle...),
			"warden serve: vault: approle auth at auth/approle-typo: login refused (auth/approle-typo/login: 403 permission denied): is the auth method enabled at that mount? If logins failed before, Vault may have locked the role out: see `vault read sys/locked-users` (docs/vault.md, Lockout)\n"},
		{"kubernetes auth not enabled", []string{"--vault-auth", "kubernetes", "--vault-k8s-role", "warden", "--vault-k8s-token-file", jwt},
			"warden serve: vault: kubernetes auth at auth/kubernetes (role \"warden\"): login refused (auth/kubernetes/login: 403 permission denied): is the auth method enabled at that mount? If logins failed before, Vault may have locked the role out: see `vault read sys/locked-users` (docs/vault.md, Lockout)\n"},
		{"http:// against HTTPS", append([]string{"--vault-addr", plainAddr}, approle...),
			"warden serve: vault: approle auth at auth/approle: Vault at " + plainAddr + " speaks HTTPS: use an https:// address (--vault-addr)\n"},
		{"missing CA certificate", append([]string{"--vault-cacert", ""}, approle...),
			"warden serve: vault: approle auth at auth/approle: cannot reach Vault at " + v.Addr + ": its TLS certificate is not signed by a CA warden trusts (" +
				`Put "` + v.Addr + `/v1/auth/approle/login": tls: failed to verify certificate: x509: certificate signed by unknown authority); ` +
				"give the CA of Vault's certificate with --vault-cacert (env VAULT_CACERT)\n"},
		// The PKI engine's root is not the CA of Vault's TLS certificate.
		{"wrong CA certificate", append([]string{"--vault-cacert", vaultRoot}, approle...),
			"warden serve: vault: approle auth at auth/approle: cannot reach Vault at " + v.Addr + ": its TLS certificate is not signed by the CA in " + vaultRoot + " (" +
				`Put "` + v.Addr + `/v1/auth/approle/login": tls: failed to verify certificate: x509: certificate signed by unknown authority); ` +
				"give with --vault-cacert (env VAULT_CACERT) the CA that issued Vault's TLS certificate, which is not necessarily the PKI engine's root\n"},
		{"nothing listening", append([]string{"--vault-addr", "https://" + closed}, approle...),
			"warden serve: vault: approle auth at auth/approle: cannot reach Vault at https://" + closed + ": connection refused; is Vault running at that address (--vault-addr)?\n"},
		{"flags for another auth method", []string{"--vault-auth", "token", "--vault-token-file", filepath.Join(dir, "warden-token"), "--vault-approle-role-id", "x"},
			"warden serve: usage: --vault-approle-role-id is for --vault-auth approle, but this run uses --vault-auth token (the default outside Kubernetes is token): add --vault-auth approle, or drop --vault-approle-role-id\n"},
		{"unknown auth", []string{"--vault-auth", "ldap"}, "warden serve: usage: --vault-auth \"ldap\": want token, approle or kubernetes\n"},
		{"no address", []string{"--vault-addr", ""}, "warden serve: usage: --ca-upstream vault needs --vault-addr (or VAULT_ADDR)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := testkit.FreeAddr(t)
			args := append([]string{"serve", "--data-dir", t.TempDir(), "--listen", addr, "--http-listen", ""}, base...)
			code, _, stderr := run(t, append(args, tc.flags...)...)
			if code == 0 || !strings.HasSuffix(stderr, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant suffix:\n%s", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "CA ready") || strings.Contains(stderr, "serving CA API") {
				t.Fatalf("a CA came up:\n%s", stderr)
			}
			if strings.Count(stderr, "logged in to Vault") > 1 {
				t.Fatalf("logged in more than once:\n%s", stderr)
			}
		})
	}
	code, _, stderr := run(t, "serve", "--ca-upstream", "consul")
	if code != 2 || !strings.Contains(stderr, `warden serve: usage: --ca-upstream "consul": want vault (or nothing, for warden's own root)`) {
		t.Fatalf("--ca-upstream consul: %d %s", code, stderr)
	}
}

// waitFor waits until the log holds want at least n times.
// serveVault runs warden serve with the Vault upstream (auth flags in
// vaultArgs) and a 40s intermediate, which Vault backdates by 30s, so it
// is renewed 5s after it is issued: renewals every few seconds. It
// returns once the CA API is served; the process stops with the test.
func serveVault(t *testing.T, data, httpAddr string, vaultArgs []string) (string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	addr := testkit.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args := append([]string{"serve", "--data-dir", data, "--listen", addr, "--http-listen", httpAddr,
		"--vault-intermediate-ttl", "40s", "--vault-min-intermediate-ttl", "20s"}, vaultArgs...)
	go func() { done <- app.Run(ctx, args, logs, logs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("warden serve exited %d:\n%s", code, logs.String())
		}
	})
	waitFor(t, logs, "serving CA API", 1)
	return addr, logs
}

func waitFor(t *testing.T, logs *syncBuffer, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(logs.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %d× %q:\n%s", n, want, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func verifyChain(t *testing.T, what string, chain []*x509.Certificate, rootFile string) {
	t.Helper()
	b, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ca.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !chain[2].Equal(roots[0]) {
		t.Fatalf("%s: chain of %d certificates, want leaf, intermediate, Vault's root", what, len(chain))
	}
	bundle := x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("cluster.local"), roots)
	if _, _, err := x509svid.Verify(chain[:2], bundle); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func pemChain(chain []*x509.Certificate) [][]byte {
	var out [][]byte
	for _, c := range chain {
		out = append(out, ca.EncodeCerts(c))
	}
	return out
}

func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	return testkit.MetricValue(t, body, name)
}

// TestServeVaultWritesRootCert: in Vault mode warden serve writes Vault's
// root to <data-dir>/root-cert.pem (0600, like a self-signed store's), an
// agent trusting that file reaches the CA, and when Vault's root is
// rotated (here the default issuer switched directly) the file follows:
// the new root once it signs (no consumer to wait for, no grace), then
// the old one, still trusted for the leaves it signed.
func TestServeVaultWritesRootCert(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	data := filepath.Join(t.TempDir(), "data")
	rootFile := filepath.Join(data, "root-cert.pem")
	vaultRootFile := filepath.Join(dir, "vault-root.pem")
	b, err := os.ReadFile(vaultRootFile)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, err := ca.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	addr, logs := serveVault(t, data, "", append(approleFlags(v, dir), "--rotation-grace", "0s"))
	readRoots := func() []*x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(rootFile)
		if err != nil {
			t.Fatal(err)
		}
		roots, err := ca.ParseCerts(b)
		if err != nil {
			t.Fatalf("%s: %v", rootFile, err)
		}
		return roots
	}
	if got := readRoots(); len(got) != 1 || !got[0].Equal(oldRoot[0]) {
		t.Fatalf("%s holds %d certificates, want Vault's root alone", rootFile, len(got))
	}
	if fi, err := os.Stat(rootFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: mode %v (%v), want 0600", rootFile, fi.Mode(), err)
	}
	chain := certRequest(t, addr, data, rootFile, filepath.Join(t.TempDir(), "svid"))
	verifyChain(t, "leaf requested with --root-cert <data-dir>/root-cert.pem", chain, vaultRootFile)

	// Rotate Vault's root: a new issuer, made the default that
	// sign-intermediate and ca/pem use.
	rotated := v.API(t, "POST", "/v1/pki/root/rotate/internal",
		map[string]any{"common_name": "Example Mesh Root CA 2", "key_type": "ec", "key_bits": 256, "ttl": "87600h"})
	d := rotated["data"].(map[string]any)
	v.API(t, "POST", "/v1/pki/config/issuers", map[string]any{"default": d["issuer_id"]})
	newRoot, err := ca.ParseCerts([]byte(d["certificate"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := readRoots()
		if len(got) == 2 && got[0].Equal(newRoot[0]) && got[1].Equal(oldRoot[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d certificates 60s after the rotation, want the new root then the old:\n%s", rootFile, len(got), logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fi, err := os.Stat(rootFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s after the rotation: mode %v (%v), want 0600", rootFile, fi.Mode(), err)
	}
}

// TestServeVaultRefusesSelfSignedDataDir: a data directory holding a CA
// of warden's own (a run without Vault, or a stray key) stops warden
// serve --ca-upstream vault before it contacts Vault, naming the files,
// and leaves them as they were.
func TestServeVaultRefusesSelfSignedDataDir(t *testing.T) {
	v, dir := vaultSetup(t, "approle")
	selfSigned := filepath.Join(t.TempDir(), "data")
	_, stop := serve(t, selfSigned)
	if code := stop(); code != 0 {
		t.Fatalf("self-signed warden serve exited %d", code)
	}
	strayKey := t.TempDir()
	if err := os.WriteFile(filepath.Join(strayKey, "ca-key.pem"), []byte("not used\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, data, files string
	}{
		{"self-signed store", selfSigned, "ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem"},
		{"a stray CA key", strayKey, "ca-key.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, tc.data)
			args := append([]string{"serve", "--data-dir", tc.data, "--listen", testkit.FreeAddr(t), "--http-listen", ""}, approleFlags(v, dir)...)
			// A deadline, so that a warden that does not refuse fails the
			// test instead of serving until the test binary times out.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stdout, stderr syncBuffer
			code := app.Run(ctx, args, &stdout, &stderr)
			want := "warden serve: --ca-upstream vault: " + tc.data + " holds a CA of warden's own (" + tc.files + ") from a run without Vault; " +
				"warden would replace its root-cert.pem with Vault's root, so it refuses: move those files away or use another --data-dir\n"
			if code != 1 || !strings.HasSuffix(stderr.String(), want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and suffix:\n%s", code, stderr.String(), want)
			}
			if strings.Contains(stderr.String(), "logged in to Vault") {
				t.Fatalf("warden contacted Vault before refusing:\n%s", stderr.String())
			}
			if after := snapshot(t, tc.data); after != before {
				t.Fatalf("the data directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshot describes a directory's files: names, modes and content hashes.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "%s %v %x; ", e.Name(), fi.Mode(), sha256.Sum256(b))
	}
	return out.String()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
