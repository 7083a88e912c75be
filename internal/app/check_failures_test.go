package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/testkit"
)

// checkLine is a line of warden check's human output, as it prints it.
func checkLine(status, check, msg string) string {
	mark := map[string]string{"ok": "ok     ", "warning": "WARNING", "error": "ERROR  "}[status]
	return fmt.Sprintf("%s %-16s %s", mark, check, msg)
}

// hasLine says whether out holds want as a whole line.
func hasLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if l == want {
			return true
		}
	}
	return false
}

// matchLine says whether a whole line of out matches re (anchored).
func matchLine(out, re string) bool {
	r := regexp.MustCompile("^" + re + "$")
	for _, l := range strings.Split(out, "\n") {
		if r.MatchString(l) {
			return true
		}
	}
	return false
}

// expiredRoot is a self-signed root that expired a day ago.
func expiredRoot(t *testing.T, cn string) *ca.Material {
	t.Helper()
	m, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: cn, TTL: 24 * time.Hour, MaxPathLen: -1,
		Clock: catest.NewClock(time.Now().Add(-48 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCheckStandaloneCAFailures: warden check on CA material that serve
// would refuse, each with its exact line and exit 1: a plugged-in
// directory whose key is not its certificate's, one whose intermediate
// is under another root than root-cert.pem, a data directory holding an
// expired root, and a Vault-mode data directory (root-cert.pem alone)
// whose root expired (-o json).
func TestCheckStandaloneCAFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	root, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: "corp root", MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Organization: "cluster.local", CommonName: "mesh intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local", CommonName: "foreign root"})
	if err != nil {
		t.Fatal(err)
	}
	good, _ := inter.Encode()
	of, _ := other.Encode()

	// The same directory, consistent: ok, exit 0.
	plugged := filepath.Join(dir, "cacerts")
	writePluggedIn(t, plugged, good)
	if code, out, _ := run(t, "check", "--kubernetes=false", "--plugged-in-dir", plugged); code != 0 ||
		!hasLine(out, checkLine("ok", "cacerts", `the signing certificate "CN=mesh intermediate,O=cluster.local" chains to the trust bundle (1 root(s))`)) {
		t.Fatalf("consistent cacerts: exit %d\n%s", code, out)
	}

	mismatched := good
	mismatched.CAKey = of.CAKey
	foreign := good
	foreign.RootCert = of.RootCert
	foreign.CertChain = good.CACert
	for _, c := range []struct {
		name string
		f    ca.Files
		msg  string
	}{
		{"key", mismatched, "ca: ca-key.pem does not match the public key in ca-cert.pem"},
		{"foreign", foreign, "ca: ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate signed by unknown authority"},
	} {
		d := filepath.Join(dir, c.name)
		writePluggedIn(t, d, c.f)
		code, out, stderr := run(t, "check", "--kubernetes=false", "--plugged-in-dir", d)
		if want := checkLine("error", "cacerts", "plugged-in CA in "+d+": "+c.msg); code != 1 || !hasLine(out, want) || stderr != "warden check: some checks failed\n" {
			t.Errorf("%s: exit %d, want 1 and the line\n%s\nin\n%s%s", c.name, code, want, out, stderr)
		}
	}

	// A data directory whose root expired.
	old := expiredRoot(t, "old root")
	oldFiles, _ := old.Encode()
	data := filepath.Join(dir, "data")
	if err := (&filestore.Store{Dir: data}).Create(context.Background(), oldFiles); err != nil {
		t.Fatal(err)
	}
	code, out, _ := run(t, "check", "--kubernetes=false", "--data-dir", data)
	want := regexp.QuoteMeta(checkLine("error", "ca", "ca: ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate has expired or is not yet valid: current time ")) +
		`\S+` + regexp.QuoteMeta(" is after "+old.Cert.NotAfter.UTC().Format(time.RFC3339))
	if code != 1 || !matchLine(out, want) {
		t.Errorf("expired data directory: exit %d, want 1 and a line matching\n%s\nin\n%s", code, want, out)
	}

	// Vault mode keeps only root-cert.pem in the data directory: the
	// bundle is checked, and its expired root is an error, in JSON too.
	vaultData := filepath.Join(dir, "vault-data")
	os.MkdirAll(vaultData, 0o700)
	if err := os.WriteFile(filepath.Join(vaultData, "root-cert.pem"), oldFiles.RootCert, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "check", "--kubernetes=false", "--data-dir", vaultData, "-o", "json")
	var rep struct {
		Failed  bool
		Results []struct{ Check, Status, Message string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	expired := fmt.Sprintf("%q expired at %s", "CN=old root,O=cluster.local", old.Cert.NotAfter.UTC().Format(time.RFC3339))
	found := false
	for _, r := range rep.Results {
		if r.Check == "bundle" && r.Status == "error" && r.Message == expired {
			found = true
		}
	}
	if code != 1 || !rep.Failed || !found {
		t.Errorf("expired bundle: exit %d, failed %t, want a bundle error %q in\n%s", code, rep.Failed, expired, out)
	}
}

// TestCheckStandaloneConfigFailures: warden check --config-dir with files
// that do not load (an error each, also in JSON), and a directory that loads
// with every policy and routing finding: an unknown destination host, an
// unknown subset, a DestinationRule for an unknown host, a jwksUri
// cluster no proxy has (errors), a selector matching nothing, a setting
// the compiler reports and two namespace-wide PeerAuthentications in
// conflict (warnings).
func TestCheckStandaloneConfigFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	root, _ := ca.NewSelfSigned(ca.CAOptions{Organization: "cluster.local"})
	f, _ := root.Encode()
	if err := (&filestore.Store{Dir: data}).Create(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	services, err := os.ReadFile("../../docs/examples/flaskapp/services.yaml")
	if err != nil {
		t.Fatal(err)
	}

	broken := filepath.Join(dir, "broken")
	os.MkdirAll(broken, 0o755)
	os.WriteFile(filepath.Join(broken, "services.yaml"), services, 0o644)
	os.WriteFile(filepath.Join(broken, "typo.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: default}\nspec: {action: ALOW}\n"), 0o644)
	os.WriteFile(filepath.Join(broken, "typo2.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: typo2, namespace: default}\nspec: {mtls: {mode: STRICTEST}}\n"), 0o644)
	wantMsg := broken + `/typo.yaml: api: document 1 (AuthorizationPolicy default/typo): spec.action: "ALOW" is not one of ALLOW, DENY, AUDIT, CUSTOM`
	code, out, _ := run(t, "check", "--kubernetes=false", "--data-dir", data, "--config-dir", broken)
	// Every file's problem, each its own line.
	for _, msg := range []string{wantMsg, broken + `/typo2.yaml: api: document 1 (PeerAuthentication default/typo2): spec.mtls.mode: "STRICTEST" is not one of UNSET, DISABLE, PERMISSIVE, STRICT`} {
		if code != 1 || !hasLine(out, checkLine("error", "config", msg)) {
			t.Errorf("a file that does not load: exit %d, want 1 and the line\n%s\nin\n%s", code, checkLine("error", "config", msg), out)
		}
	}
	code, out, _ = run(t, "check", "--kubernetes=false", "--data-dir", data, "--config-dir", broken, "-o", "json")
	var rep struct {
		Failed  bool
		Results []struct{ Check, Status, Message string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	if found := func() bool {
		for _, r := range rep.Results {
			if r.Check == "config" && r.Status == "error" && r.Message == wantMsg {
				return true
			}
		}
		return false
	}(); code != 1 || !rep.Failed || !found {
		t.Errorf("a file that does not load, -o json: exit %d, failed %t, no config error %q in\n%s", code, rep.Failed, wantMsg, out)
	}

	mesh := filepath.Join(dir, "mesh")
	os.MkdirAll(mesh, 0o755)
	os.WriteFile(filepath.Join(mesh, "services.yaml"), services, 0o644)
	os.WriteFile(filepath.Join(mesh, "bad.yaml"), []byte(testkit.CheckFindingsYAML("default", "flaskapp", "flaskap")), 0o644)
	// A jwksUri host that is a bare name resolves to no service (issue
	// #33): its remote_jwks cluster is one no proxy has.
	os.WriteFile(filepath.Join(mesh, "jwt.yaml"), []byte("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\n"+
		"spec: {jwtRules: [{issuer: issuer.example.com, jwksUri: \"https://keys/jwks\"}]}\n"), 0o644)
	code, out, _ = run(t, "check", "--kubernetes=false", "--data-dir", data, "--config-dir", mesh)
	for _, want := range []string{
		checkLine("ok", "config", mesh+": 9 objects, 3 services"),
		checkLine("error", "clusters", `jwt_authn of default/127.0.0.2 and 3 other workload(s) fetches the keys of issuer "issuer.example.com" (jwksUri https://keys/jwks) through cluster outbound|443||keys, `+
			"which its proxy does not have: tokens of that issuer are refused (401); name a service of the registry and one of its ports (docs/policy-authn.md), and let the proxy see it (Sidecar egress, exportTo)"),
		checkLine("warning", "policy", "JWT issuer issuer.example.com (RequestAuthentication default/jwt): jwksUri https://keys/jwks: host keys is a bare name, which names no registry service "+
			"(its namespace would be the caller's); write <name>.<namespace> or the service's FQDN; until then Envoy cannot fetch its keys and refuses its tokens"),
		checkLine("error", "routing", "VirtualService default/routes: destination host flaskap.default.svc.cluster.local is not in the service registry: calls routed to it fail"),
		checkLine("error", "routing", "VirtualService default/routes: destination flaskapp.default.svc.cluster.local subset v9 is not defined by a DestinationRule: calls routed to it fail"),
		checkLine("error", "routing", "DestinationRule default/ghost: host ghost.default.svc.cluster.local is not in the service registry"),
		checkLine("warning", "policy", "AuthorizationPolicy default/nobody: selector app=flask matches no workload in the registry"),
		checkLine("warning", "policy", "VirtualService default/routes: http[2].delegate is not supported; the rule is skipped"),
		checkLine("warning", "policy", "2 namespace-wide PeerAuthentications in default: using default/a (the oldest, by creationTimestamp then name), ignoring default/b"),
	} {
		if !hasLine(out, want) {
			t.Errorf("no line\n%s\nin\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("routing errors: exit %d, want 1\n%s", code, out)
	}
}
