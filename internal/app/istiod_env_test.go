package app_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// TestIstiodEnv: warden serve takes istiod's environment variables as
// its flags' defaults, a flag given winning: the root's lifetime
// (CITADEL_SELF_SIGNED_CA_CERT_TTL), the default workload lifetime
// (DEFAULT_WORKLOAD_CERT_TTL), the audiences (TOKEN_AUDIENCES), more
// serving names (ISTIOD_CUSTOM_HOST); MAX_WORKLOAD_CERT_TTL loses to
// --max-ttl; CA_TRUSTED_NODE_ACCOUNTS, honoured in Kubernetes mode only,
// is warned of in standalone mode; an invalid value stops serve naming
// the variable.
func TestIstiodEnv(t *testing.T) {
	t.Setenv("CITADEL_SELF_SIGNED_CA_CERT_TTL", "4800h")
	t.Setenv("DEFAULT_WORKLOAD_CERT_TTL", "2h")
	t.Setenv("MAX_WORKLOAD_CERT_TTL", "3h")
	t.Setenv("TOKEN_AUDIENCES", "custom-aud")
	t.Setenv("ISTIOD_CUSTOM_HOST", "istiod.mesh.example")
	t.Setenv("CA_TRUSTED_NODE_ACCOUNTS", "istio-system/ztunnel")
	t.Setenv("CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL", "1h")
	t.Setenv("CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE", "20%")
	data := filepath.Join(t.TempDir(), "data")
	addr := testkit.FreeAddr(t)
	_, logs := serveLogged(t, data, addr, "--max-ttl", "5h")

	rootPEM, err := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := ca.ParseCerts(rootPEM)
	if life := roots[0].NotAfter.Sub(roots[0].NotBefore); life < 4799*time.Hour || life > 4801*time.Hour {
		t.Errorf("root lifetime %s, want 4800h (CITADEL_SELF_SIGNED_CA_CERT_TTL)", life)
	}
	token := func(aud string) string {
		t.Helper()
		code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "sleep", "--token-audiences", aud)
		if code != 0 {
			t.Fatalf("token: %s", stderr)
		}
		f := filepath.Join(t.TempDir(), "token")
		os.WriteFile(f, []byte(tok), 0o600)
		return f
	}
	request := func(tok string, ttl string) (int, string, []*x509.Certificate) {
		t.Helper()
		out := t.TempDir()
		code, stdout, stderr := run(t, "cert", "request", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tok, "--out", out, "--overwrite", "--ttl", ttl)
		b, _ := os.ReadFile(filepath.Join(out, "cert-chain.pem"))
		chain, _ := ca.ParseCerts(b)
		return code, stdout + stderr, chain
	}
	custom := token("custom-aud")
	code, out, chain := request(custom, "0s")
	if code != 0 {
		t.Fatalf("a token for TOKEN_AUDIENCES: %s\n%s", out, logs.String())
	}
	if life := chain[0].NotAfter.Sub(chain[0].NotBefore); life < 2*time.Hour || life > 2*time.Hour+10*time.Minute {
		t.Errorf("default leaf lifetime %s, want 2h (DEFAULT_WORKLOAD_CERT_TTL) and the backdating", life)
	}
	if code, out, _ = request(custom, "4h"); code != 0 {
		t.Errorf("--max-ttl 5h given, MAX_WORKLOAD_CERT_TTL=3h: a 4h request refused: %s", out)
	}
	if code, out, _ = request(token("istio-ca"), "0s"); code == 0 || !strings.Contains(out, "Unauthenticated") {
		t.Errorf("a token for istio-ca, not in TOKEN_AUDIENCES: exit %d\n%s", code, out)
	}
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	names := c.ConnectionState().PeerCertificates[0].DNSNames
	c.Close()
	if !slices.Contains(names, "istiod.mesh.example") {
		t.Errorf("serving names %v lack ISTIOD_CUSTOM_HOST's", names)
	}
	for _, want := range []string{
		`level=INFO msg="istiod's environment variables applied (flags given win)" variables="CITADEL_SELF_SIGNED_CA_CERT_TTL=4800h (--root-ttl 4800h0m0s), DEFAULT_WORKLOAD_CERT_TTL=2h (--default-ttl 2h0m0s), TOKEN_AUDIENCES=custom-aud (--token-audiences custom-aud), CITADEL_SELF_SIGNED_ROOT_CERT_GRACE_PERIOD_PERCENTILE=20% (--auto-rotate-root 0.2), CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel (--trusted-node-accounts istio-system/ztunnel)"`,
		`level=WARN msg="node accounts (--trusted-node-accounts, CA_TRUSTED_NODE_ACCOUNTS) may ask for other identities' certificates in Kubernetes mode only: standalone, warden has no pods to authorize against`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %s in\n%s", want, logs.String())
		}
	}

	t.Setenv("CA_TRUSTED_NODE_ACCOUNTS", "ztunnel")
	code, _, stderr := run(t, "serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if want := `CA_TRUSTED_NODE_ACCOUNTS="ztunnel" (istiod's variable for --trusted-node-accounts): nodeauth: trusted node account "ztunnel": want <namespace>/<service account>, e.g. istio-system/ztunnel`; code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("an invalid CA_TRUSTED_NODE_ACCOUNTS: exit %d, want 2 and %q\n%s", code, want, stderr)
	}
	t.Setenv("CA_TRUSTED_NODE_ACCOUNTS", "istio-system/ztunnel")
	t.Setenv("DEFAULT_WORKLOAD_CERT_TTL", "a day")
	code, _, stderr = run(t, "serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", "")
	if want := `DEFAULT_WORKLOAD_CERT_TTL="a day" (istiod's variable for --default-ttl): time: invalid duration "a day"`; code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("an invalid DEFAULT_WORKLOAD_CERT_TTL: exit %d, want 2 and %q\n%s", code, want, stderr)
	}
}

// TestTrustedNodeAccountsFlag: --trusted-node-accounts is checked in
// every mode (a malformed entry is a usage error naming it, before
// anything is read or listened on); in Kubernetes mode node accounts need
// a cluster ID; standalone, naming node accounts is warned of, since
// only Kubernetes mode has pods to authorize against.
func TestTrustedNodeAccountsFlag(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--trusted-node-accounts", "istio-system/ztunnel,ztunnel"}, `--trusted-node-accounts: nodeauth: trusted node account "ztunnel": want <namespace>/<service account>, e.g. istio-system/ztunnel`},
		{[]string{"--kubernetes", "--kubeconfig", filepath.Join(t.TempDir(), "none"), "--cluster-id", ""}, "--cluster-id is empty: node proxies name their cluster, and warden must know its own (istiod's default is Kubernetes)"},
	} {
		code, _, stderr := run(t, append([]string{"serve", "--data-dir", data, "--listen", testkit.FreeAddr(t), "--http-listen", ""}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("serve %v: exit %d, want 2 and %q\n%s", c.args, code, c.want, stderr)
		}
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("a refused serve made its data directory: %v", err)
	}
	_, logs := serveLogged(t, data, testkit.FreeAddr(t), "--trusted-node-accounts", "kube-system/node-proxy")
	if want := `level=WARN msg="node accounts (--trusted-node-accounts, CA_TRUSTED_NODE_ACCOUNTS) may ask for other identities' certificates in Kubernetes mode only`; !strings.Contains(logs.String(), want) {
		t.Errorf("no %q in\n%s", want, logs.String())
	}
	_, logs = serveLogged(t, filepath.Join(t.TempDir(), "data"), testkit.FreeAddr(t))
	if strings.Contains(logs.String(), "node accounts") {
		t.Errorf("standalone with the default accounts warned:\n%s", logs.String())
	}
}
