// Command vaultbin is a real Vault server for warden's tests: Vault's own
// core, HTTP API, PKI secrets engine and AppRole and Kubernetes auth
// methods, built from the Go module proxy (the full Vault binary's plugin
// set is not buildable here, see docs/vault.md).
//
// It starts initialized and unsealed with one key share. With -data the
// storage is Vault's file backend in that directory, and the unseal key and
// root token are kept there (0600), so a killed server restarted on the same
// directory comes back with the same mounts, roots, roles and tokens — what
// the outage tests need. Without -data the storage is in memory.
//
// With -tls it serves HTTPS with a certificate for 127.0.0.1 and localhost
// issued by a throwaway CA written to <data>/tls-ca.pem (reused on restart).
//
// On readiness it prints one JSON line on stdout:
//
//	{"addr":"https://127.0.0.1:8200","root_token":"hvs....","ca_cert":"/tmp/.../tls-ca.pem"}
//
// This is a test fixture: the root token is printed on purpose, as
// `vault server -dev` does.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	kubeauth "github.com/hashicorp/vault-plugin-auth-kubernetes"
	"github.com/hashicorp/vault/builtin/credential/approle"
	"github.com/hashicorp/vault/builtin/logical/pki"
	"github.com/hashicorp/vault/helper/testhelpers/corehelpers"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/internalshared/configutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical"
	"github.com/hashicorp/vault/sdk/physical/file"
	"github.com/hashicorp/vault/sdk/physical/inmem"
	"github.com/hashicorp/vault/vault"
)

type initState struct {
	UnsealKey []byte `json:"unseal_key"`
	RootToken string `json:"root_token"`
}

type ready struct {
	Addr      string `json:"addr"`
	RootToken string `json:"root_token"`
	CACert    string `json:"ca_cert,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vaultbin:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to serve the Vault API on")
	data := flag.String("data", "", "directory for file storage and the unseal key (empty: in memory, lost on exit)")
	useTLS := flag.Bool("tls", false, "serve HTTPS (needs -data for the CA file)")
	logLevel := flag.String("log-level", "warn", "Vault core log level")
	flag.Parse()
	if *useTLS && *data == "" {
		return errors.New("-tls needs -data")
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %s: only loopback addresses", *listen)
	}

	logger := hclog.New(&hclog.LoggerOptions{Name: "vault", Level: hclog.LevelFromString(*logLevel), Output: os.Stderr})
	var backend physical.Backend
	if *data == "" {
		backend, err = inmem.NewInmem(nil, logger)
	} else {
		if err = os.MkdirAll(*data, 0o700); err != nil {
			return err
		}
		backend, err = file.NewFileBackend(map[string]string{"path": filepath.Join(*data, "storage")}, logger)
	}
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}

	core, err := vault.NewCore(&vault.CoreConfig{
		Physical:        backend,
		Logger:          logger,
		DisableMlock:    true,
		BuiltinRegistry: corehelpers.NewMockBuiltinRegistry(),
		LogicalBackends: map[string]logical.Factory{"pki": pki.Factory},
		CredentialBackends: map[string]logical.Factory{
			"approle":    approle.Factory,
			"kubernetes": kubeauth.Factory,
		},
	})
	if err != nil {
		return fmt.Errorf("core: %w", err)
	}
	ctx := context.Background()
	state, err := initOrLoad(ctx, core, *data)
	if err != nil {
		return err
	}
	if _, err := core.Unseal(state.UnsealKey); err != nil {
		return fmt.Errorf("unseal: %w", err)
	}
	for i := 0; core.Sealed(); i++ {
		if i > 200 {
			return errors.New("unseal: still sealed after 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	scheme := "http"
	caFile := ""
	if *useTLS {
		var cfg *tls.Config
		cfg, caFile, err = serverTLS(*data)
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, cfg)
		scheme = "https"
	}
	srv := &http.Server{
		Handler:           vaulthttp.Handler.Handler(&vault.HandlerProperties{Core: core, ListenerConfig: &configutil.Listener{}}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "vaultbin: serve:", err)
			os.Exit(1)
		}
	}()
	line, _ := json.Marshal(ready{Addr: scheme + "://" + ln.Addr().String(), RootToken: state.RootToken, CACert: caFile})
	fmt.Println(string(line))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return core.Shutdown()
}

// initOrLoad initializes fresh storage with one key share, or reads the
// unseal key written when this data directory was initialized.
func initOrLoad(ctx context.Context, core *vault.Core, dir string) (initState, error) {
	var st initState
	stateFile := filepath.Join(dir, "init.json")
	done, err := core.Initialized(ctx)
	if err != nil {
		return st, fmt.Errorf("initialized: %w", err)
	}
	if done {
		if dir == "" {
			return st, errors.New("storage initialized but no -data to read the unseal key from")
		}
		b, err := os.ReadFile(stateFile)
		if err != nil {
			return st, fmt.Errorf("storage is initialized: %w", err)
		}
		return st, json.Unmarshal(b, &st)
	}
	res, err := core.Initialize(ctx, &vault.InitParams{
		BarrierConfig:  &vault.SealConfig{SecretShares: 1, SecretThreshold: 1},
		RecoveryConfig: nil,
	})
	if err != nil {
		return st, fmt.Errorf("initialize: %w", err)
	}
	st = initState{UnsealKey: res.SecretShares[0], RootToken: res.RootToken}
	if dir != "" {
		b, _ := json.Marshal(st)
		if err := os.WriteFile(stateFile, b, 0o600); err != nil {
			return st, err
		}
	}
	return st, nil
}

// serverTLS loads or creates a CA and a loopback server certificate in dir.
func serverTLS(dir string) (*tls.Config, string, error) {
	caFile := filepath.Join(dir, "tls-ca.pem")
	certFile := filepath.Join(dir, "tls-cert.pem")
	keyFile := filepath.Join(dir, "tls-key.pem")
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		if err := writeServerCert(caFile, certFile, keyFile); err != nil {
			return nil, "", fmt.Errorf("tls: %w", err)
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, "", fmt.Errorf("tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, caFile, nil
}

func writeServerCert(caFile, certFile, keyFile string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vaultbin test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "vault.test"},
		DNSNames:     []string{"localhost", "vault.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}
