package vault

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// Auth is a way to log in to Vault: Token, AppRole or Kubernetes.
type Auth interface {
	// String names the method and its mount for messages; never a secret.
	String() string
	check() error
	// login authenticates through c; at names Vault in transport errors.
	login(ctx context.Context, c *api.Client, at endpoint) (*api.Secret, error)
	// credentials is a digest of what the next login would send (the
	// files are read again), so that a refused login is retried at once
	// when the operator writes new credentials, and not before.
	credentials() [32]byte
}

// Token authenticates with a Vault token given by the operator, renewed
// while renewable. From a file, it is read at every login and the file is
// checked every second: a new token written there is used at once, so
// that it can be rotated without a restart.
type Token struct {
	Token string // the token itself (VAULT_TOKEN), when there is no File
	File  string // a file holding the token (--vault-token-file); wins over Token
}

// AppRole logs in with a role ID and a secret ID (read from a file, so
// that it never appears on a command line).
type AppRole struct {
	Mount        string // auth mount path; default "approle"
	RoleID       string
	SecretIDFile string
}

// Kubernetes logs in with the pod's service-account token, which Vault
// checks with a TokenReview against the cluster.
type Kubernetes struct {
	Mount   string // auth mount path; default "kubernetes"
	Role    string
	JWTFile string // default DefaultServiceAccountTokenFile; re-read at every login (projected tokens rotate)
}

// DefaultServiceAccountTokenFile is where Kubernetes mounts a pod's token.
const DefaultServiceAccountTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

var (
	_ Auth = Token{}
	_ Auth = AppRole{}
	_ Auth = Kubernetes{}
)

func (Token) String() string { return "token auth" }

func (t Token) check() error {
	if t.File == "" && strings.TrimSpace(t.Token) == "" {
		return errors.New("vault: token auth: no token (set VAULT_TOKEN or --vault-token-file)")
	}
	return nil
}

// value is the token to send: the file's content, read now, or Token.
func (t Token) value() (string, error) {
	if t.File == "" {
		return strings.TrimSpace(t.Token), nil
	}
	tok, err := readSecretFile(t.File)
	if err != nil {
		return "", fmt.Errorf("vault: token auth: token file: %w", err)
	}
	return tok, nil
}

// login checks the token with lookup-self, so that a revoked or expired
// token is refused at startup.
func (t Token) login(ctx context.Context, c *api.Client, at endpoint) (*api.Secret, error) {
	tok, err := t.value()
	if err != nil {
		return nil, err
	}
	lc, err := c.CloneWithHeaders()
	if err != nil {
		return nil, err
	}
	lc.SetToken(tok)
	s, err := lc.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		if msg, down := at.down(err); down != nil {
			return nil, fmt.Errorf("vault: token auth: %s%w", msg, errSuffix(down))
		}
		msg := fmt.Sprintf("vault: token auth: Vault refused the token (auth/token/lookup-self: %s); is it revoked or expired?", describe(err))
		if t.File != "" {
			msg += fmt.Sprintf(" Write a new one to %s (a running warden reads it again every second)", t.File)
		} else {
			msg += " (a token from VAULT_TOKEN is read once: give it with --vault-token-file to replace it without a restart)"
		}
		return nil, fmt.Errorf("%s%w", msg, errSuffix(ErrCredentials))
	}
	if s == nil || s.Data == nil {
		return nil, errors.New("vault: token auth: empty answer from auth/token/lookup-self")
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	policies, _ := s.TokenPolicies()
	return &api.Secret{Auth: &api.SecretAuth{
		ClientToken:   tok,
		Policies:      policies,
		LeaseDuration: int(ttl / time.Second),
		Renewable:     renewable,
	}}, nil
}

func (a AppRole) mount() string { return mountOr(a.Mount, "approle") }

func (a AppRole) credentials() [32]byte {
	b, _ := os.ReadFile(a.SecretIDFile)
	return sha256.Sum256(append([]byte(a.RoleID+"\x00"), b...))
}

func (k Kubernetes) credentials() [32]byte {
	b, _ := os.ReadFile(k.jwtFile())
	return sha256.Sum256(b)
}

func (t Token) credentials() [32]byte {
	tok, _ := t.value()
	return sha256.Sum256([]byte(tok))
}

func (a AppRole) String() string { return "approle auth at auth/" + a.mount() }

func (a AppRole) check() error {
	if a.RoleID == "" || a.SecretIDFile == "" {
		return fmt.Errorf("vault: %s: a role ID and a secret ID file are required", a)
	}
	return nil
}

func (a AppRole) login(ctx context.Context, c *api.Client, at endpoint) (*api.Secret, error) {
	secretID, err := readSecretFile(a.SecretIDFile)
	if err != nil {
		return nil, fmt.Errorf("vault: %s: secret ID: %w", a, err)
	}
	return write(ctx, c, at, a, "auth/"+a.mount()+"/login", map[string]any{"role_id": a.RoleID, "secret_id": secretID})
}

func (k Kubernetes) mount() string { return mountOr(k.Mount, "kubernetes") }

func (k Kubernetes) jwtFile() string {
	if k.JWTFile == "" {
		return DefaultServiceAccountTokenFile
	}
	return k.JWTFile
}

func (k Kubernetes) String() string {
	return fmt.Sprintf("kubernetes auth at auth/%s (role %q)", k.mount(), k.Role)
}

func (k Kubernetes) check() error {
	if k.Role == "" {
		return fmt.Errorf("vault: %s: a role is required", k)
	}
	return nil
}

func (k Kubernetes) login(ctx context.Context, c *api.Client, at endpoint) (*api.Secret, error) {
	jwt, err := readSecretFile(k.jwtFile())
	if err != nil {
		return nil, fmt.Errorf("vault: %s: service-account token: %w", k, err)
	}
	return write(ctx, c, at, k, "auth/"+k.mount()+"/login", map[string]any{"role": k.Role, "jwt": jwt})
}

// write posts a login request without any current token.
func write(ctx context.Context, c *api.Client, at endpoint, a Auth, path string, body map[string]any) (*api.Secret, error) {
	lc, err := c.CloneWithHeaders()
	if err != nil {
		return nil, err
	}
	lc.ClearToken()
	s, err := lc.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		if msg, down := at.down(err); down != nil {
			return nil, fmt.Errorf("vault: %s: %s%w", a, msg, errSuffix(down))
		}
		msg := fmt.Sprintf("vault: %s: login refused (%s: %s)", a, path, describe(err))
		if h := loginHint(a, err); h != "" {
			msg += ": " + h
		}
		return nil, fmt.Errorf("%s%w", msg, errSuffix(ErrCredentials))
	}
	return s, nil
}

// errSuffix wraps a sentinel without changing the message.
func errSuffix(sentinel error) error { return silent{sentinel} }

type silent struct{ err error }

func (s silent) Error() string { return "" }
func (s silent) Unwrap() error { return s.err }

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

func mountOr(m, def string) string {
	if m = strings.Trim(m, "/"); m != "" {
		return m
	}
	return def
}
