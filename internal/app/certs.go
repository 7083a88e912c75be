package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/internal/atomicfile"
	"github.com/wardenmesh/warden/internal/rotation"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/token"
)

// Workload file names, as Citadel's istio.<sa> Secrets spell them.
const (
	fileCertChain = "cert-chain.pem"
	fileKey       = "key.pem"
	fileRoot      = "root-cert.pem"
)

func runToken(_ context.Context, e *env, args []string) error {
	fs := e.flags("token")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "standalone data directory holding the token key")
	ns := fs.String("namespace", "", "namespace of the service account (required; --ns for short)")
	fs.StringVar(ns, "ns", "", "the same as --namespace")
	sa := fs.String("sa", "", "service account name (required)")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	aud := fs.String("token-audiences", token.DefaultAudience, "comma-separated audiences (as serve's --token-audiences; --audience is the same)")
	fs.StringVar(aud, "audience", token.DefaultAudience, "the same as --token-audiences")
	iss := fs.String("token-issuer", defaultTokenIssuer, "iss claim; must match 'warden serve --token-issuer'")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *ns == "" || *sa == "" {
		return fmt.Errorf("%w: --namespace (or --ns) and --sa are required", errUsage)
	}
	issuer, err := tokenIssuer(*dataDir, *iss, false, false)
	if err != nil {
		return err
	}
	tok, err := issuer.Mint(token.ServiceAccount{Namespace: *ns, Name: *sa}, splitList(*aud), *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, tok)
	return nil
}

func runCAInfo(ctx context.Context, e *env, args []string) error {
	fs := e.flags("ca info")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "standalone data directory")
	plugged := fs.String("plugged-in-dir", "", "show a plugged-in CA directory instead")
	if err := parse(fs, args); err != nil {
		return err
	}
	var (
		m   *ca.Material
		err error
	)
	if *plugged != "" {
		m, err = filestore.LoadPluggedIn(*plugged, time.Now())
	} else {
		var f ca.Files
		if f, err = (&filestore.Store{Dir: *dataDir}).Load(ctx); err == nil {
			m, err = ca.DecodeMaterial(f, time.Now())
		} else if vaultDir(*dataDir) {
			// Vault mode: the intermediate lives in memory; the data
			// directory holds only the trust bundle.
			b, _ := os.ReadFile(filepath.Join(*dataDir, ca.FileRootCert))
			roots, perr := ca.ParseCerts(b)
			if perr != nil {
				return fmt.Errorf("%s: %w", filepath.Join(*dataDir, ca.FileRootCert), perr)
			}
			fmt.Fprintf(e.stdout, "%s holds the trust bundle of a Vault-backed CA (warden serve --ca-upstream vault): the signing intermediate is in the running server's memory; see its log (\"intermediate CA activated\") or citadel_server_cert_chain_expiry_timestamp on /metrics.\n", *dataDir)
			st, found, err := rotation.FileUpstreamStore{Path: filepath.Join(*dataDir, rotation.VaultStateFile)}.Load()
			if err != nil {
				return err
			}
			if found && (st.Next != nil || len(st.Old) > 0) {
				fmt.Fprintln(e.stdout, "Root rotation in progress in Vault; see 'warden ca rotate --status'.")
			}
			for i, r := range roots {
				fmt.Fprintf(e.stdout, "Root %d%s:\n", i+1, vaultRootRole(st, found, r))
				describeCert(e.stdout, r, "  ")
			}
			return nil
		}
	}
	if err != nil {
		return err
	}
	var (
		rot    *ca.Rotation
		target ca.Phase
	)
	if *plugged == "" {
		// A root rotation in progress: the CA signs, and trusts, what
		// its phase says, not the main store alone.
		st, next, found, err := (&rotation.DirStore{Dir: *dataDir, Clock: ca.SystemClock{}}).Peek(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", *dataDir, err)
		}
		if found {
			rot, target = &ca.Rotation{Phase: st.Phase, Current: m, Next: next}, st.Target
		}
	}
	describeCA(e.stdout, m, rot, target)
	return nil
}

// describeCA writes the roots of the trust bundle (the first signs), the
// signing chain, and, during a rotation, which root is which.
func describeCA(w io.Writer, m *ca.Material, rot *ca.Rotation, target ca.Phase) {
	signing := m
	if rot != nil {
		signing = rot.Signing()
		fmt.Fprintf(w, "Root rotation in progress: %s (target %s); see 'warden ca rotate --status'.\n", rot.Phase, target)
	}
	for i, r := range signing.Roots {
		fmt.Fprintf(w, "Root %d%s:\n", i+1, rootRole(rot, r, i == 0))
		describeCert(w, r, "  ")
	}
	if rot != nil && rot.Phase == ca.PhasePrepared {
		fmt.Fprintln(w, "Prepared root (not trusted yet: 'warden ca rotate publish' adds it to the bundle):")
		describeCert(w, rot.Next.Roots[0], "  ")
	}
	if !signing.Roots[0].Equal(signing.Cert) {
		fmt.Fprintln(w, "Signing CA:")
		describeCert(w, signing.Cert, "  ")
		for i, c := range signing.Chain {
			fmt.Fprintf(w, "Intermediate %d:\n", i+1)
			describeCert(w, c, "  ")
		}
	}
	fmt.Fprintf(w, "Leaves expire no later than: %s\n", signing.NotAfter().UTC().Format(time.RFC3339))
}

// vaultRootRole says, during a rotation in Vault, which root is which
// (in the words rootRole uses for a rotation of warden's own root).
func vaultRootRole(st rotation.UpstreamState, found bool, root *x509.Certificate) string {
	switch {
	case !found || st.Next == nil && len(st.Old) == 0:
		return ""
	case st.Next != nil && root.Equal(st.Next):
		return " (new root, trusted; signs from activation)"
	case root.Equal(st.Signing) && st.Next != nil:
		return " (old root, signs until activation)"
	case root.Equal(st.Signing):
		return " (new root, signs)"
	}
	for _, o := range st.Old {
		if root.Equal(o.Root) {
			return fmt.Sprintf(" (old root, trusted until %s, when the last intermediate under it has expired)", o.RetireAfter.UTC().Format(time.RFC3339))
		}
	}
	return ""
}

// rootRole says, during a rotation, whether root is the old or the new
// one and what it does (the first root of the bundle signs).
func rootRole(rot *ca.Rotation, root *x509.Certificate, signs bool) string {
	if rot == nil {
		return ""
	}
	isNew := slices.ContainsFunc(rot.Next.Roots, root.Equal)
	switch {
	case isNew && signs:
		return " (new root, signs)"
	case isNew:
		return " (new root, trusted; signs from activation)"
	case signs:
		return " (old root, signs until activation)"
	}
	return " (old root, trusted until retirement)"
}

func runCertInspect(_ context.Context, e *env, args []string) error {
	fs := e.flags("cert inspect")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want exactly one PEM file", errUsage)
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	certs, err := ca.ParseCerts(b)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	for i, c := range certs {
		fmt.Fprintf(e.stdout, "Certificate %d:\n", i+1)
		describeCert(e.stdout, c, "  ")
	}
	return nil
}

func describeCert(w io.Writer, c *x509.Certificate, in string) {
	if id, err := x509svid.IDFromCert(c); err == nil {
		fmt.Fprintf(w, "%sSPIFFE ID:   %s\n", in, id)
	}
	if s := c.Subject.String(); s != "" {
		fmt.Fprintf(w, "%sSubject:     %s\n", in, s)
	}
	fmt.Fprintf(w, "%sIssuer:      %s\n", in, c.Issuer)
	fmt.Fprintf(w, "%sSerial:      %x\n", in, c.SerialNumber)
	fmt.Fprintf(w, "%sNot before:  %s\n", in, c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "%sNot after:   %s\n", in, c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "%sKey:         %s\n", in, ca.DescribeKey(c.PublicKey))
	fmt.Fprintf(w, "%sCA:          %t\n", in, c.IsCA)
	if len(c.DNSNames) > 0 {
		fmt.Fprintf(w, "%sDNS names:   %s\n", in, strings.Join(c.DNSNames, ", "))
	}
	// Lower-case hex, as every fingerprint warden prints (ca.Fingerprint).
	fmt.Fprintf(w, "%sSHA-256:     %s\n", in, ca.Fingerprint(c))
}

func runCertRequest(ctx context.Context, e *env, args []string) error {
	fs := e.flags("cert request")
	addr := fs.String("ca", e.caAddr(), "warden's CA port, host:port (env WARDEN_ADDR)")
	tokenFile := fs.String("token-file", "", "file holding the bearer token (e.g. from 'warden token')")
	out := fs.String("out", "", "directory to write cert-chain.pem, key.pem (0600) and root-cert.pem (required)")
	rootFile, dataDir := e.trustAnchorFlags(fs)
	serverName := fs.String("server-name", "", "expected name in the CA's certificate (default: host of --ca)")
	caID := caIDFlag(fs)
	ttl := fs.Duration("ttl", 0, "requested lifetime (0: the CA's default)")
	kt := fs.String("key-type", string(ca.ECDSAP256), "workload key type: "+ca.KeyTypeNames())
	want := fs.String("spiffe-id", "", "put this SPIFFE ID in the CSR (the CA refuses any but the caller's own)")
	renew := fs.Bool("renew", false, "authenticate with the SVID already in --out (mTLS) and replace it")
	overwrite := fs.Bool("overwrite", false, "replace existing files in --out")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	if (*tokenFile == "") == !*renew {
		return fmt.Errorf("%w: give exactly one of --token-file or --renew", errUsage)
	}
	keyType, err := ca.ParseKeyType(*kt)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var id spiffeid.ID
	if *want != "" {
		if id, err = spiffeid.FromString(*want); err != nil {
			return fmt.Errorf("%w: --spiffe-id: %v", errUsage, err)
		}
	}
	if !*renew && !*overwrite {
		if _, err := os.Stat(filepath.Join(*out, fileKey)); err == nil {
			return fmt.Errorf("%s already exists; pass --renew to rotate it or --overwrite to replace it", filepath.Join(*out, fileKey))
		}
	}
	anchors, err := e.trustAnchors(*rootFile, *dataDir)
	if err != nil {
		return err
	}
	roots := certPool(anchors)
	serverID, err := parseCAID(*caID)
	if err != nil {
		return err
	}
	cfg := client.Config{Addr: *addr, Roots: roots, ServerName: *serverName, ServerID: serverID}
	if cfg.ServerName == "" {
		if host, _, err := net.SplitHostPort(*addr); err == nil {
			cfg.ServerName = host
		}
	}
	var tok string
	if *renew {
		cur, err := loadSVID(*out)
		if err != nil {
			return fmt.Errorf("--renew: %w", err)
		}
		cfg.ClientCert = cur
	} else if tok, err = client.ReadTokenFile(*tokenFile); err != nil {
		return err
	}
	c, err := client.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := c.Request(ctx, client.Request{KeyType: keyType, TTL: *ttl, Token: tok, ID: id})
	if err != nil {
		return portHint(err, "--ca", *addr)
	}
	if err := writeSVID(*out, res); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s\nissued, valid until %s, written to %s\n", res.ID, res.Certs[0].NotAfter.UTC().Format(time.RFC3339), *out)
	return nil
}

// vaultDir says whether dataDir is a Vault-mode data directory: the
// trust bundle without CA files.
func vaultDir(dataDir string) bool {
	if _, err := os.Stat(filepath.Join(dataDir, ca.FileRootCert)); err != nil {
		return false
	}
	for _, n := range []string{ca.FileCACert, ca.FileCAKey} {
		if _, err := os.Stat(filepath.Join(dataDir, n)); err == nil {
			return false
		}
	}
	return true
}

// trustAnchorFlags registers --root-cert, the trust anchors for warden's
// serving certificate, and --data-dir, which its default depends on: the
// same two flags on every client of the CA (cert request, agent).
func (e *env) trustAnchorFlags(fs *flag.FlagSet) (rootFile, dataDir *string) {
	rootFile = fs.String("root-cert", "", rootCertUsage)
	dataDir = fs.String("data-dir", e.dataDirDefault(), "standalone data directory, for the default --root-cert (env WARDEN_DATA_DIR)")
	return rootFile, dataDir
}

// rootCertUsage is --root-cert's description wherever it is registered.
const rootCertUsage = "trust anchors for warden's serving certificate (default $WARDEN_ROOT_CERT, else <data-dir>/root-cert.pem, else " + podRootCert + " where a pod mounts istio-ca-root-cert)"

// trustAnchors reads the trust anchors for warden's serving certificate
// (--root-cert): rootFile, or when it is empty the default for dataDir
// (rootCertDefault). A file that does not exist is named with where the
// bundle is, in a cluster and in standalone mode.
func (e *env) trustAnchors(rootFile, dataDir string) ([]*x509.Certificate, error) {
	path := rootFile
	if path == "" {
		path = e.rootCertDefault(dataDir)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		where := fmt.Sprintf("the bundle warden publishes: on Kubernetes, the pod's mount of the istio-ca-root-cert ConfigMap at %s (outside a pod: kubectl get configmap istio-ca-root-cert -o jsonpath='{.data.root-cert\\.pem}' > root-cert.pem); in standalone mode, the data directory's root-cert.pem (--data-dir)", podRootCert)
		if rootFile == "" {
			return nil, fmt.Errorf("%w: no trust anchors for warden's serving certificate: %s does not exist. Give --root-cert (or $WARDEN_ROOT_CERT): %s", errUsage, path, where)
		}
		return nil, fmt.Errorf("%w: no trust anchors for warden's serving certificate: --root-cert %s does not exist. Give %s", errUsage, path, where)
	}
	if err != nil {
		return nil, fmt.Errorf("the trust anchors for warden's serving certificate (--root-cert): %w", err)
	}
	certs, err := ca.ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("the trust anchors for warden's serving certificate (--root-cert): %s: %w", path, err)
	}
	return certs, nil
}

// certPool is a pool of certs.
func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// writeSVID writes the key (0600), chain and root atomically, key first.
func writeSVID(dir string, r *client.Result) error {
	return sds.WriteFiles(dir, &sds.SVID{ID: r.ID, Certs: r.Certs, Key: r.Key}, r.Roots)
}

func loadSVID(dir string) (*tls.Certificate, error) {
	kb, err := atomicfile.ReadPrivate(filepath.Join(dir, fileKey))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no %s in %s to renew", fileKey, dir)
	}
	if err != nil {
		return nil, err
	}
	key, err := ca.ParseKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, fileKey), err)
	}
	cb, err := os.ReadFile(filepath.Join(dir, fileCertChain))
	if err != nil {
		return nil, err
	}
	certs, err := ca.ParseCerts(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, fileCertChain), err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

// caIDFlag is --ca-id: the identity a client requires of the CA.
func caIDFlag(fs *flag.FlagSet) *string {
	return fs.String("ca-id", client.ControlPlaneID(spiffeid.RequireTrustDomainFromString(defaultTrustDomain)).String(),
		"SPIFFE ID the CA's certificate must carry (warden serve's is spiffe://<trust domain>/ns/warden-system/sa/warden; istiod's is usually spiffe://cluster.local/ns/istio-system/sa/istiod)")
}

func parseCAID(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: --ca-id: %v", errUsage, err)
	}
	return id, nil
}

// portHint names the port a client probably confused: a TLS handshake
// answered in plain HTTP is warden's HTTP port given where its CA port
// is meant.
func portHint(err error, flag, addr string) error {
	if err != nil && strings.Contains(err.Error(), "first record does not look like a TLS handshake") {
		return fmt.Errorf("%w (%s %s answers in plain HTTP: is it warden's HTTP port, serve's --http-listen, 127.0.0.1:15014 by default? The CA port is serve's --listen, 127.0.0.1:15012 by default)", err, flag, addr)
	}
	return err
}
