package app

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/vault"
	"github.com/wardenmesh/warden/internal/atomicfile"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/rotation"
)

// vaultFlags configure --ca-upstream vault. The VAULT_* variables are the
// defaults users of the Vault CLI expect.
type vaultFlags struct {
	upstream                     string
	addr, caCert, serverName, ns string
	mount, signPath              string
	auth                         string
	tokenFile, envToken          string
	approleMount, roleID, secret string
	k8sMount, k8sRole, k8sToken  string
	ttl, minTTL                  time.Duration
	issuerPoll                   time.Duration
	renewFraction                float64
	set                          map[string]bool // flags given on the command line
}

// authFlags are the flags each auth method reads.
var authFlags = map[string][]string{
	"token":      {"vault-token-file"},
	"approle":    {"vault-approle-mount", "vault-approle-role-id", "vault-approle-secret-id-file"},
	"kubernetes": {"vault-k8s-mount", "vault-k8s-role", "vault-k8s-token-file"},
}

func (v *vaultFlags) register(fs *flag.FlagSet, e *env) {
	fs.StringVar(&v.upstream, "ca-upstream", "", "where the signing intermediate comes from: empty (warden's own root) or vault")
	fs.StringVar(&v.addr, "vault-addr", e.getenv("VAULT_ADDR"), "Vault's URL (env VAULT_ADDR)")
	fs.StringVar(&v.caCert, "vault-cacert", e.getenv("VAULT_CACERT"), "PEM file with the CA of Vault's TLS certificate (env VAULT_CACERT)")
	fs.StringVar(&v.serverName, "vault-tls-server-name", e.getenv("VAULT_TLS_SERVER_NAME"), "name to verify in Vault's TLS certificate (env VAULT_TLS_SERVER_NAME)")
	fs.StringVar(&v.ns, "vault-namespace", e.getenv("VAULT_NAMESPACE"), "Vault Enterprise namespace (env VAULT_NAMESPACE)")
	fs.StringVar(&v.mount, "vault-pki-mount", vault.DefaultPKIMount, "mount path of Vault's PKI engine")
	fs.StringVar(&v.signPath, "vault-sign-path", "", "Vault endpoint that signs the intermediate (default <pki mount>/root/sign-intermediate)")
	auth := "token"
	if e.getenv("KUBERNETES_SERVICE_HOST") != "" {
		auth = "kubernetes"
	}
	fs.StringVar(&v.auth, "vault-auth", auth, "Vault auth method: token, approle or kubernetes")
	fs.StringVar(&v.tokenFile, "vault-token-file", "", "file holding the Vault token (token auth; default env VAULT_TOKEN), read again every second: write a new token there to replace it")
	v.envToken = e.getenv("VAULT_TOKEN")
	fs.StringVar(&v.approleMount, "vault-approle-mount", "approle", "AppRole auth mount")
	fs.StringVar(&v.roleID, "vault-approle-role-id", "", "AppRole role ID")
	fs.StringVar(&v.secret, "vault-approle-secret-id-file", "", "file holding the AppRole secret ID")
	fs.StringVar(&v.k8sMount, "vault-k8s-mount", "kubernetes", "Kubernetes auth mount")
	fs.StringVar(&v.k8sRole, "vault-k8s-role", "", "Vault role for Kubernetes auth")
	fs.StringVar(&v.k8sToken, "vault-k8s-token-file", vault.DefaultServiceAccountTokenFile, "service-account token for Kubernetes auth (re-read at each login)")
	fs.DurationVar(&v.ttl, "vault-intermediate-ttl", ca.DefaultIntermediateTTL, "requested lifetime of the intermediate Vault signs")
	fs.DurationVar(&v.minTTL, "vault-min-intermediate-ttl", ca.DefaultMinLife, "refuse an intermediate Vault issues with less life left than this (its PKI mount's max_lease_ttl too low); warden asks Vault at most once every tenth of it")
	fs.Float64Var(&v.renewFraction, "vault-renew-fraction", ca.DefaultRenewFraction, "renew the intermediate after this share of its life (at most 0.8)")
	fs.DurationVar(&v.issuerPoll, "vault-issuer-poll", time.Minute, "how often warden reads the PKI mount's issuers, to publish a root rotated in Vault before it signs under it")
}

// enabled reports whether the intermediate comes from Vault; other values
// of --ca-upstream are usage errors.
func (v *vaultFlags) enabled() (bool, error) {
	switch v.upstream {
	case "":
		return false, nil
	case "vault":
		return true, nil
	}
	return false, fmt.Errorf("%w: --ca-upstream %q: want vault (or nothing, for warden's own root)", errUsage, v.upstream)
}

func (v *vaultFlags) config() (vault.Config, error) {
	cfg := vault.Config{Address: v.addr, CACert: v.caCert, TLSServerName: v.serverName, Namespace: v.ns, PKIMount: v.mount, SignPath: v.signPath}
	if v.addr == "" {
		return cfg, fmt.Errorf("%w: --ca-upstream vault needs --vault-addr (or VAULT_ADDR)", errUsage)
	}
	if _, known := authFlags[v.auth]; known {
		for method, names := range authFlags {
			for _, n := range names {
				if method != v.auth && v.set[n] {
					return cfg, fmt.Errorf("%w: --%s is for --vault-auth %s, but this run uses --vault-auth %s (the default outside Kubernetes is token): add --vault-auth %s, or drop --%s", errUsage, n, method, v.auth, method, n)
				}
			}
		}
	}
	switch v.auth {
	case "token":
		// A file is read at each login and watched (a new token there is
		// used at once); VAULT_TOKEN is read once.
		cfg.Auth = vault.Token{Token: v.envToken, File: v.tokenFile}
	case "approle":
		cfg.Auth = vault.AppRole{Mount: v.approleMount, RoleID: v.roleID, SecretIDFile: v.secret}
	case "kubernetes":
		cfg.Auth = vault.Kubernetes{Mount: v.k8sMount, Role: v.k8sRole, JWTFile: v.k8sToken}
	default:
		return cfg, fmt.Errorf("%w: --vault-auth %q: want token, approle or kubernetes", errUsage, v.auth)
	}
	return cfg, nil
}

// vaultRotation is how a root rotated in Vault is followed in one mode:
// where its state is kept, which consumers activation waits for, who
// reports the status and who decides (Kubernetes' leader, for every
// replica), and what else the mode wires before the first intermediate.
type vaultRotation struct {
	store     rotation.UpstreamStore
	consumers func() []bundle.Consumer
	report    func(ctx context.Context, st rotation.Status) bool
	leading   func() bool
	wire      func(u *rotation.Upstream)
}

// wireVault makes an authority whose intermediate Vault signs: it logs
// in, obtains and proves the first intermediate (failing startup
// otherwise), and schedules the token and intermediate renewals, and the
// watch of the PKI mount's issuers: a root rotated in Vault is published
// to every consumer before an intermediate under it signs
// (rotation.Upstream).
func (s *controlPlane) wireVault(ctx context.Context, f serveFlags, caCfg ca.Config, kt ca.KeyType, vr vaultRotation) error {
	v := f.vault
	if v.minTTL <= 0 || v.ttl < v.minTTL {
		return fmt.Errorf("%w: --vault-intermediate-ttl %s must be at least --vault-min-intermediate-ttl %s, the shortest intermediate warden accepts (positive)", errUsage, v.ttl, v.minTTL)
	}
	if v.issuerPoll <= 0 {
		return fmt.Errorf("%w: --vault-issuer-poll %s must be positive", errUsage, v.issuerPoll)
	}
	vcfg, err := v.config()
	if err != nil {
		return err
	}
	vcfg.Log = s.log
	up, err := vault.New(ctx, vcfg)
	if err != nil {
		return err
	}
	if s.authority, err = ca.New(caCfg, nil); err != nil {
		return err
	}
	mount := vcfg.PKIMount
	if mount == "" {
		mount = vault.DefaultPKIMount
	}
	describe := fmt.Sprintf("Vault at %s (PKI mount %s)", v.addr, mount)
	// With several replicas the leader does not see the others'
	// intermediates: none under the old root outlives the TTL they ask.
	var replicaTTL time.Duration
	if vr.leading != nil {
		replicaTTL = v.ttl
	}
	s.vaultRot, err = rotation.NewUpstream(rotation.UpstreamConfig{
		Log: s.log, Authority: s.authority, Clock: caCfg.Clock, Issuers: up, Consumers: vr.consumers, Store: vr.store,
		Grace: f.rotationGrace, Poll: v.issuerPoll, Describe: describe, Report: vr.report, Leading: vr.leading, ReplicaTTL: replicaTTL,
		Switch: func(is ca.UpstreamIssuer) string {
			ref := is.ID
			if ref == "" {
				ref = "<new issuer>"
			}
			if v.signPath != "" {
				return fmt.Sprintf("warden signs with --vault-sign-path %s; point it at the new issuer (%s/issuer/%s/sign-intermediate) and restart, or make that issuer sign there", v.signPath, mount, ref)
			}
			return fmt.Sprintf("make the new issuer the default (vault write %s/root/replace default=%s)", mount, ref)
		},
		Manual: fmt.Sprintf("in Vault mode the root rotates in Vault: create the new root there (vault write %s/root/rotate/internal common_name=...), then make it the default issuer (vault write %s/root/replace default=<its issuer_id>); warden publishes the new root as soon as it sees it and signs under it once every consumer holds it, by itself; follow it with --status (docs/vault.md, Rotating the root in Vault)", mount, mount),
	})
	if err != nil {
		return err
	}
	if vr.wire != nil {
		vr.wire(s.vaultRot)
	}
	r, err := ca.NewRenewer(ca.RenewerConfig{
		Authority: s.authority, Upstream: up, KeyType: kt, TTL: v.ttl, RenewFraction: v.renewFraction,
		MinLife: v.minTTL, Clock: ca.SystemClock{}, Log: s.log, Gate: s.vaultRot,
	})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	s.vaultRot.SetKick(r.Kick)
	if err := r.Init(ctx); err != nil {
		return err
	}
	s.renewer = r
	s.origin = "intermediate signed by " + describe
	s.tasks = append(s.tasks, up.Run, r.Run, s.vaultRot.Run)
	return nil
}

// checkNoLocalCA refuses a data directory that holds a self-signed CA
// (from a run without --ca-upstream): in Vault mode warden writes
// root-cert.pem there, and it never replaces another CA's files.
func checkNoLocalCA(dataDir string) error {
	var found []string
	for _, n := range []string{ca.FileCACert, ca.FileCAKey, ca.FileCertChain} {
		if _, err := os.Lstat(filepath.Join(dataDir, n)); err == nil {
			found = append(found, n)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if len(found) == 0 {
		return nil
	}
	if _, err := os.Lstat(filepath.Join(dataDir, ca.FileRootCert)); err == nil {
		found = append(found, ca.FileRootCert)
	}
	return fmt.Errorf("--ca-upstream vault: %s holds a CA of warden's own (%s) from a run without Vault; "+
		"warden would replace its %s with Vault's root, so it refuses: move those files away or use another --data-dir",
		dataDir, strings.Join(found, ", "), ca.FileRootCert)
}

// writeRootCert writes the trust bundle to <dataDir>/root-cert.pem, the
// default --root-cert of agents on this host, atomically and 0600 like
// the self-signed store's files.
func writeRootCert(dataDir string, roots []*x509.Certificate) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	return atomicfile.WriteReplace(filepath.Join(dataDir, ca.FileRootCert), ca.EncodeCerts(roots...), 0o600)
}
