package vault

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"

	"github.com/hashicorp/vault/api"
)

// ErrUnreachable marks a failure to talk to Vault at all (transport, TLS,
// a wrong scheme), as opposed to Vault answering with an error.
var ErrUnreachable = errors.New("vault unreachable")

// ErrUnavailable marks an answer from a Vault that cannot serve requests
// now: sealed, a standby without an active node, overloaded (HTTP 5xx
// and 429). It says nothing about warden's credentials.
var ErrUnavailable = errors.New("vault unavailable")

// ErrCredentials marks a login Vault refused: wrong or expired
// credentials, a wrong auth mount, or a locked-out role. Retrying it
// counts toward Vault's user lockout.
var ErrCredentials = errors.New("vault login refused")

// endpoint is where warden reaches Vault: its address and the CA file
// (--vault-cacert; empty for the system's roots) that checks its TLS
// certificate, so that a failure to connect names the one to fix.
type endpoint struct{ addr, caCert string }

// down describes a Vault that cannot be used now, with what to check: a
// transport failure (ErrUnreachable) or an answer saying that Vault
// cannot serve (ErrUnavailable). The sentinel is nil, and the message
// empty, for any other error: an answer about the request itself.
func (e endpoint) down(err error) (string, error) {
	if msg, ok := e.reach(err); ok {
		return msg, ErrUnreachable
	}
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode < 500 && re.StatusCode != http.StatusTooManyRequests {
		return "", nil
	}
	if re.StatusCode == http.StatusServiceUnavailable && slices.ContainsFunc(re.Errors, func(s string) bool { return strings.Contains(s, "Vault is sealed") }) {
		return fmt.Sprintf("Vault at %s is sealed (%s): unseal it (vault operator unseal); warden tries again meanwhile", e.addr, describe(err)), ErrUnavailable
	}
	return fmt.Sprintf("Vault at %s cannot serve requests now (%s); warden tries again meanwhile", e.addr, describe(err)), ErrUnavailable
}

// reach describes a transport failure to Vault with what to check; ok is
// false when err is an answer from Vault.
func (e endpoint) reach(err error) (string, bool) {
	addr := e.addr
	var re *api.ResponseError
	if errors.As(err, &re) {
		if re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " ")+fmt.Sprint(re.RawError), "HTTP request to an HTTPS server") {
			return fmt.Sprintf("Vault at %s speaks HTTPS: use an https:// address (--vault-addr)", addr), true
		}
		return "", false
	}
	var (
		unknown   x509.UnknownAuthorityError
		hostname  x509.HostnameError
		certErr   *tls.CertificateVerificationError
		recordErr tls.RecordHeaderError
		opErr     *net.OpError
	)
	switch {
	case errors.As(err, &unknown), errors.As(err, &certErr) && errors.As(certErr.Err, &unknown):
		if e.caCert != "" {
			// A CA was given, but not the one of Vault's listener: often
			// the PKI engine's root, which signs warden's intermediate.
			return fmt.Sprintf("cannot reach Vault at %s: its TLS certificate is not signed by the CA in %s (%v); give with --vault-cacert (env VAULT_CACERT) the CA that issued Vault's TLS certificate, which is not necessarily the PKI engine's root", addr, e.caCert, err), true
		}
		return fmt.Sprintf("cannot reach Vault at %s: its TLS certificate is not signed by a CA warden trusts (%v); give the CA of Vault's certificate with --vault-cacert (env VAULT_CACERT)", addr, err), true
	case errors.As(err, &hostname):
		return fmt.Sprintf("cannot reach Vault at %s: its TLS certificate is not for that name (%v); use a name it has, or --vault-tls-server-name", addr, err), true
	case errors.As(err, &recordErr), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Sprintf("cannot reach Vault at %s: Vault speaks plain HTTP there; use an http:// address (--vault-addr), or enable TLS on Vault", addr), true
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("cannot reach Vault at %s: connection refused; is Vault running at that address (--vault-addr)?", addr), true
	case errors.As(err, &opErr):
		return fmt.Sprintf("cannot reach Vault at %s: %v; check --vault-addr and the network", addr, err), true
	}
	if strings.Contains(err.Error(), "context deadline exceeded") || strings.Contains(err.Error(), "Client.Timeout") {
		return fmt.Sprintf("cannot reach Vault at %s: no answer in time (%v)", addr, err), true
	}
	return "", false
}

// loginHint says what to check after Vault refused a login with err.
func loginHint(a Auth, err error) string {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return ""
	}
	msg := strings.ToLower(strings.Join(re.Errors, " "))
	switch {
	case strings.Contains(msg, "invalid role or secret id"), strings.Contains(msg, "invalid secret id"), strings.Contains(msg, "invalid role id"):
		if ar, ok := a.(AppRole); ok {
			return fmt.Sprintf("the role ID or the secret ID is wrong, or the secret ID expired or was used up (secret_id_ttl, secret_id_num_uses): write a new secret ID to %s (read again at each login)", ar.SecretIDFile)
		}
	case strings.Contains(msg, "service account name not authorized"), strings.Contains(msg, "namespace not authorized"):
		return "the Vault role (--vault-k8s-role) does not bind this service account and namespace: see its bound_service_account_names and bound_service_account_namespaces"
	case re.StatusCode == http.StatusForbidden && strings.Contains(msg, "permission denied"):
		return "is the auth method enabled at that mount? If logins failed before, Vault may have locked the role out: see `vault read sys/locked-users` (docs/vault.md, Lockout)"
	}
	return ""
}
