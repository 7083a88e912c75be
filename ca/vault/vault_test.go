package vault_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/ca/vault/vaulttest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// setup starts a real Vault and runs docs/vault.md's common steps plus
// the given auth step in a fresh directory, which it returns.
func setup(t *testing.T, authStep string) (*vaulttest.Server, string) {
	t.Helper()
	v := vaulttest.Start(t)
	dir := t.TempDir()
	v.RunDoc(t, dir, nil, "setup", "pki", "policy", authStep)
	return v, dir
}

// rootCert is the first certificate of the PEM file dir/name.
func rootCert(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCerts([]byte(readFile(t, dir, name)))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	s, err := readFileErr(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readFileErr(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func config(v *vaulttest.Server, auth vault.Auth) vault.Config {
	return vault.Config{Address: v.Addr, CACert: v.CACert, Auth: auth}
}

// lockedBuffer is the shared concurrent-safe buffer.
type lockedBuffer = testkit.Buffer

// TestDocsSetupTokenAuthChainsToVaultRoot: docs/vault.md's steps, token
// auth, one intermediate from Vault; a workload certificate chains leaf →
// warden intermediate → Vault root and passes go-spiffe, openssl and zlint.
func TestDocsSetupTokenAuthChainsToVaultRoot(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "token")
	vaultRoot, err := ca.ParseCerts([]byte(readFile(t, dir, "vault-root.pem")))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "warden-token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the docs' umask leaves the token file %v (%v), want 0600", fi.Mode(), err)
	}
	up, err := vault.New(context.Background(), config(v, vault.Token{Token: readFile(t, dir, "warden-token")}))
	if err != nil {
		t.Fatal(err)
	}
	a := catest.Authority(t, nil)
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, TTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	m := a.Material()
	if len(m.Roots) != 1 || !m.Roots[0].Equal(vaultRoot[0]) {
		t.Fatalf("trust bundle %v is not Vault's root %s", m.Roots, vaultRoot[0].Subject)
	}
	if err := m.Cert.CheckSignatureFrom(vaultRoot[0]); err != nil || len(m.Chain) != 0 {
		t.Fatalf("intermediate %s is not signed directly by Vault's root: %v, chain %d", m.Cert.Subject, err, len(m.Chain))
	}
	if got := time.Until(m.Cert.NotAfter); got < 47*time.Hour || got > 48*time.Hour {
		t.Errorf("intermediate lives %s more, want the requested 48h", got)
	}
	if !m.Cert.MaxPathLenZero || m.Cert.Subject.CommonName != "warden intermediate CA" ||
		len(m.Cert.Subject.Organization) != 1 || m.Cert.Subject.Organization[0] != "cluster.local" {
		t.Errorf("intermediate subject %s, pathlen zero %v", m.Cert.Subject, m.Cert.MaxPathLenZero)
	}
	for _, kt := range []ca.KeyType{ca.ECDSAP256, ca.RSA2048} {
		id := catest.ID("default", "sleep")
		iss, err := a.Sign(ca.SignRequest{CSR: catest.CSRFor(t, catest.Key(t, kt), id), ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(iss.Chain) != 3 {
			t.Fatalf("chain has %d elements, want leaf, intermediate, Vault root", len(iss.Chain))
		}
		chain, err := ca.ParseChain(iss.Chain)
		if err != nil {
			t.Fatal(err)
		}
		if !chain[1].Equal(m.Cert) || !chain[2].Equal(vaultRoot[0]) {
			t.Fatal("chain is not leaf → warden intermediate → Vault root")
		}
		got, _, err := x509svid.Verify(chain[:2], a.Bundle())
		if err != nil || got != id {
			t.Fatalf("x509svid.Verify = %v, %v", got, err)
		}
		catest.OpenSSLVerify(t, iss.Chain)
		catest.Zlint(t, "leaf "+string(kt)+" under the Vault intermediate", iss.Cert)
	}
	catest.Zlint(t, "warden intermediate signed by Vault", m.Cert)
}

func TestAppRoleAuth(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	var logs lockedBuffer
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	up, err := vault.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := up.SignIntermediate(context.Background(), csrRequest(t))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Cert == nil || len(resp.Roots) != 1 {
		t.Fatalf("response %+v", resp)
	}
	got := logs.String()
	if !strings.Contains(got, `msg="logged in to Vault"`) || !strings.Contains(got, `policies=default,warden`) {
		t.Errorf("login log: %s", got)
	}
	if strings.Contains(got, "hvs.") || strings.Contains(got, readFile(t, dir, "warden-secret-id")) {
		t.Errorf("a credential was logged: %s", got)
	}
}

func csrRequest(t *testing.T) ca.IntermediateRequest {
	t.Helper()
	key := catest.Key(t, ca.ECDSAP256)
	return ca.IntermediateRequest{CSR: catest.CSR(t, key, &x509.CertificateRequest{Subject: catest.TrustDomainSubject()}), TTL: time.Hour}
}

// TestRefusedCredentials: a wrong role, a wrong secret, a revoked token
// and a token without the policy are clear errors, at login or at the
// first signature, naming the method and Vault's answer.
func TestRefusedCredentials(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	v.RunDoc(t, dir, nil, "setup", "token")
	tok := readFile(t, dir, "warden-token")
	v.API(t, "POST", "/v1/auth/token/revoke", map[string]any{"token": tok})
	badSecret := filepath.Join(dir, "bad-secret")
	os.WriteFile(badSecret, []byte("00000000-0000-0000-0000-000000000000\n"), 0o600)
	for _, tc := range []struct {
		name string
		auth vault.Auth
		want string
	}{
		{"revoked token", vault.Token{Token: tok}, "vault: token auth: Vault refused the token (auth/token/lookup-self: 403 permission denied; invalid token); is it revoked or expired? (a token from VAULT_TOKEN is read once: give it with --vault-token-file to replace it without a restart)"},
		{"wrong role ID", vault.AppRole{RoleID: "no-such-role", SecretIDFile: filepath.Join(dir, "warden-secret-id")}, "vault: approle auth at auth/approle: login refused (auth/approle/login: 400 invalid role or secret ID): the role ID or the secret ID is wrong, or the secret ID expired or was used up (secret_id_ttl, secret_id_num_uses): write a new secret ID to " + filepath.Join(dir, "warden-secret-id") + " (read again at each login)"},
		{"wrong secret ID", vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: badSecret}, "vault: approle auth at auth/approle: login refused (auth/approle/login: 400 invalid role or secret ID): the role ID or the secret ID is wrong, or the secret ID expired or was used up (secret_id_ttl, secret_id_num_uses): write a new secret ID to " + badSecret + " (read again at each login)"},
		{"missing secret file", vault.AppRole{RoleID: "x", SecretIDFile: filepath.Join(dir, "nope")}, "vault: approle auth at auth/approle: secret ID: open " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"no token", vault.Token{}, "vault: token auth: no token (set VAULT_TOKEN or --vault-token-file)"},
		{"kubernetes auth not enabled", vault.Kubernetes{Role: "warden", JWTFile: badSecret}, `vault: kubernetes auth at auth/kubernetes (role "warden"): login refused (auth/kubernetes/login: 403 permission denied): is the auth method enabled at that mount? If logins failed before, Vault may have locked the role out: see ` + "`vault read sys/locked-users`" + ` (docs/vault.md, Lockout)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vault.New(context.Background(), config(v, tc.auth))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("New:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
	// A valid token without the warden policy logs in, then cannot sign.
	noPolicy := v.API(t, "POST", "/v1/auth/token/create", map[string]any{"policies": []string{"default"}})
	up, err := vault.New(context.Background(), config(v, vault.Token{Token: noPolicy["auth"].(map[string]any)["client_token"].(string)}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = up.SignIntermediate(context.Background(), csrRequest(t))
	if want := "vault: sign intermediate at pki/root/sign-intermediate: 403 permission denied: warden's Vault token may not write pki/root/sign-intermediate; check the PKI mount (--vault-pki-mount pki, --vault-sign-path) and that warden's policy allows update there (docs/vault.md, Policy)"; err == nil || err.Error() != want {
		t.Fatalf("SignIntermediate:\n got %v\nwant %s", err, want)
	}
	// A wrong mount.
	cfg := config(v, vault.Token{Token: v.RootToken})
	cfg.PKIMount = "pki-missing"
	up, err = vault.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = up.SignIntermediate(context.Background(), csrRequest(t))
	if err == nil || !strings.HasPrefix(err.Error(), "vault: sign intermediate at pki-missing/root/sign-intermediate: 404") {
		t.Fatalf("SignIntermediate on a missing mount: %v", err)
	}
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  vault.Config
		want string
	}{
		{vault.Config{Auth: vault.Token{Token: "x"}}, "vault: address is required"},
		{vault.Config{Address: "vault:8200", Auth: vault.Token{Token: "x"}}, `vault: address "vault:8200": want an http:// or https:// URL`},
		{vault.Config{Address: "https://127.0.0.1:1"}, "vault: an auth method is required"},
		{vault.Config{Address: "https://127.0.0.1:1", Auth: vault.Kubernetes{}}, `vault: kubernetes auth at auth/kubernetes (role ""): a role is required`},
		{vault.Config{Address: "https://127.0.0.1:1", Auth: vault.AppRole{RoleID: "r"}}, "vault: approle auth at auth/approle: a role ID and a secret ID file are required"},
		{vault.Config{Address: "https://127.0.0.1:1", CACert: "/nonexistent.pem", Auth: vault.Token{Token: "x"}}, `vault: TLS (CA cert "/nonexistent.pem"): Error loading CA File: open /nonexistent.pem: no such file or directory`},
	} {
		if _, err := vault.New(context.Background(), tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("New:\n got %v\nwant %s", err, tc.want)
		}
	}
}

// TestTLSServerName: Vault's certificate names 127.0.0.1, localhost and
// vault.test; a server name outside it is refused, vault.test works.
func TestTLSServerName(t *testing.T) {
	t.Parallel()
	v := vaulttest.Start(t)
	cfg := config(v, vault.Token{Token: v.RootToken})
	cfg.TLSServerName = "vault.test"
	if _, err := vault.New(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	cfg.TLSServerName = "other.test"
	_, err := vault.New(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "certificate is valid for localhost, vault.test, not other.test") {
		t.Fatalf("New with a wrong server name: %v", err)
	}
	cfg.TLSServerName, cfg.CACert = "", ""
	_, err = vault.New(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("New without Vault's CA: %v", err)
	}
}

// TestVaultOutageAndRestart: with Vault killed, the renewer's attempts
// fail and signing goes on with the current intermediate; with Vault
// restarted (same storage, same address), the next attempt renews, with
// no restart of the client, and leaves from before and after verify.
func TestVaultOutageAndRestart(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log, cfg.RetryMin, cfg.RetryMax = log, 100*time.Millisecond, time.Second
	up, err := vault.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	upDone := make(chan error, 1)
	go func() { upDone <- up.Run(ctx) }()
	clock := catest.NewClock(time.Now())
	a := catest.Authority(t, nil, catest.WithClock(clock))
	r, err := ca.NewRenewer(ca.RenewerConfig{Authority: a, Upstream: up, Clock: clock, TTL: 10 * time.Hour, Log: log,
		RetryMin: time.Minute, RetryMax: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Init(ctx); err != nil {
		t.Fatal(err)
	}
	first := a.Material()
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		<-upDone
	})
	sign := func(what string) []*x509.Certificate {
		t.Helper()
		id := catest.ID("default", "sleep")
		iss, err := a.Sign(ca.SignRequest{CSR: catest.CSRFor(t, catest.Key(t, ca.ECDSAP256), id), ID: id})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		chain, _ := ca.ParseChain(iss.Chain[:2])
		return chain
	}
	parked := func() {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for clock.Waiters() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("renewer not waiting; log:\n%s", logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	before := sign("before the outage")

	v.Stop()
	parked()
	clock.Add(5*time.Hour + time.Minute) // past half-life: the renewal fails
	parked()
	if a.Material() != first {
		t.Fatal("material changed while Vault was down")
	}
	if !strings.Contains(logs.String(), "intermediate CA renewal failed; signing continues with the current one") ||
		!strings.Contains(logs.String(), `error="vault: sign intermediate: cannot reach Vault at `+v.Addr+`: connection refused; is Vault running at that address (--vault-addr)?"`) {
		t.Fatalf("no failed renewal logged:\n%s", logs.String())
	}
	during := sign("during the outage")

	v.Restart()
	clock.Add(time.Minute) // the first retry
	deadline := time.Now().Add(20 * time.Second)
	for a.Material() == first {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal after Vault came back; log:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	second := a.Material()
	if !second.Roots[0].Equal(first.Roots[0]) || second.Cert.Equal(first.Cert) {
		t.Fatal("the restarted Vault did not sign a new intermediate under the same root")
	}
	after := sign("after the restart")
	if !after[1].Equal(second.Cert) {
		t.Fatal("new leaves are not under the new intermediate")
	}
	for what, chain := range map[string][]*x509.Certificate{"before": before, "during": during, "after": after} {
		if _, _, err := x509svid.Verify(chain, a.Bundle(), x509svid.WithTime(clock.Now())); err != nil {
			t.Errorf("leaf from %s the outage: %v", what, err)
		}
	}
}

// TestTokenRenewalAndRelogin: Run renews the login token with the
// lifetime watcher, logs in again when the token reaches its max TTL or
// renewal fails (Vault killed), and keeps retrying until Vault is back.
func TestTokenRenewalAndRelogin(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	// Short-lived tokens: renewed within seconds, dead after 4s.
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_ttl": "2s", "token_max_ttl": "4s"})
	var logs lockedBuffer
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: filepath.Join(dir, "warden-secret-id")})
	cfg.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 500*time.Millisecond
	up := runUpstream(t, cfg)
	wait := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(logs.String(), what) < n {
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %d× %q:\n%s", n, what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait(`msg="renewed the Vault token"`, 1)
	wait(`msg="Vault token renewal stopped; logging in again" auth="approle auth at auth/approle" error="token reached its maximum TTL"`, 1)
	wait(`msg="logged in to Vault"`, 2)
	time.Sleep(time.Second) // the first token has expired by now
	if _, err := up.SignIntermediate(t.Context(), csrRequest(t)); err != nil {
		t.Fatalf("signing with the renewed login: %v\n%s", err, logs.String())
	}
	v.Stop()
	wait(`msg="Vault login failed; retrying"`, 1)
	logins := strings.Count(logs.String(), `msg="logged in to Vault"`)
	v.Restart()
	wait(`msg="logged in to Vault"`, logins+1)
	if _, err := up.SignIntermediate(t.Context(), csrRequest(t)); err != nil {
		t.Fatalf("signing after Vault's restart: %v\n%s", err, logs.String())
	}
}

// TestExpiredSecretIDNoLockout: an AppRole whose secret IDs are good for
// one login. When warden's token reaches its max TTL and the secret ID is
// used up, Vault refuses the login; warden does not try again with the same secret ID
// (Vault locks a role out after a few failures), neither from its login
// loop nor from a signing attempt, and logs in at once when a new secret
// ID is written to the file.
func TestExpiredSecretIDNoLockout(t *testing.T) {
	t.Parallel()
	v, dir := setup(t, "approle")
	// Short tokens and secret IDs good for one login.
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_policies": []string{"warden"}, "token_ttl": "2s", "token_max_ttl": "3s", "secret_id_num_uses": 1})
	secretFile := filepath.Join(dir, "warden-secret-id")
	newSecret := func() {
		s := v.API(t, "POST", "/v1/auth/approle/role/warden/secret-id", nil)
		if err := os.WriteFile(secretFile, []byte(s["data"].(map[string]any)["secret_id"].(string)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newSecret()
	logs := &lockedBuffer{}
	cfg := config(v, vault.AppRole{RoleID: readFile(t, dir, "warden-role-id"), SecretIDFile: secretFile})
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	cfg.CredentialRetry = 9 * time.Second // 5 minutes by default
	up := runUpstream(t, cfg)

	waitLog := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !strings.Contains(logs.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("log lacks %q:\n%s", want, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The token expires at 3 s; the relogin then is refused.
	waitLog("Vault refused warden's credentials", 30*time.Second)
	refusedAt := up.Logins()
	// Once the last token has expired, a signing attempt does not log in
	// with the refused secret ID either.
	time.Sleep(3 * time.Second)
	_, err := up.SignIntermediate(context.Background(), csrRequest(t))
	if err == nil || !strings.Contains(err.Error(), "not logging in again with the credentials Vault refused") {
		t.Fatalf("SignIntermediate with refused credentials: %v", err)
	}
	time.Sleep(3 * time.Second)
	if n := up.Logins(); n != refusedAt {
		t.Fatalf("%d more login attempts with the refused secret ID within 6 s", n-refusedAt)
	}
	// Once the wait is over, the same secret ID is tried once more (the
	// role may have been fixed meanwhile), then the wait starts again.
	deadline := time.Now().Add(15 * time.Second)
	for up.Logins() == refusedAt {
		if time.Now().After(deadline) {
			t.Fatalf("the refused credentials were never tried again after the wait:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	if n := up.Logins(); n != refusedAt+1 {
		t.Fatalf("%d login attempts after the wait, want 1", n-refusedAt)
	}
	locked := v.API(t, "GET", "/v1/sys/locked-users", nil)
	data, _ := locked["data"].(map[string]any)
	if b, _ := json.Marshal(locked["data"]); data == nil || data["total"] != float64(0) {
		t.Fatalf("Vault locked the role out (or said nothing): %s", b)
	}
	// A new secret ID (good for any number of logins): logged in at once.
	v.API(t, "POST", "/v1/auth/approle/role/warden", map[string]any{"token_policies": []string{"warden"}, "token_ttl": "1h", "token_max_ttl": "24h", "secret_id_num_uses": 0})
	newSecret()
	before := strings.Count(logs.String(), "logged in to Vault")
	deadline = time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), "logged in to Vault") == before {
		if time.Now().After(deadline) {
			t.Fatalf("no login with the new secret ID:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "new Vault credentials found; logging in") {
		t.Errorf("the new secret ID was not noticed:\n%s", logs.String())
	}
	if _, err := up.SignIntermediate(context.Background(), csrRequest(t)); err != nil {
		t.Fatalf("signing after the new secret ID: %v", err)
	}
	t.Logf("%d login attempts in all", up.Logins())
}

// runUpstream makes an Upstream of cfg and runs it (its renewals) until
// the test ends.
func runUpstream(t *testing.T, cfg vault.Config) *vault.Upstream {
	t.Helper()
	up, err := vault.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- up.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return up
}
