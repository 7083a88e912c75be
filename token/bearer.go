package token

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNoToken means a call carried no token at all (as opposed to one
// malformed).
var ErrNoToken = errors.New("token: none sent")

// FromAuthorization returns the token of an authorization header, given
// all of its values: exactly one value of the form "Bearer <token>" (RFC
// 6750 §2.1: credentials = "Bearer" 1*SP b64token). The scheme is
// case-insensitive (RFC 9110 §11.1); whitespace around the value is not
// part of it (RFC 9110 §5.5). Anything else is refused: another scheme
// (Basic), a bare token, an empty token, several tokens, characters
// outside b64token. It never echoes the value, which may be a secret.
// No values at all is ErrNoToken.
//
// It is warden's one parser of bearer credentials: the CA's
// authenticators, central SDS and the node agent all call it.
func FromAuthorization(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", ErrNoToken
	case 1:
	default:
		return "", fmt.Errorf("token: %d authorization values; send one", len(values))
	}
	v := strings.Trim(values[0], " \t")
	if v == "" {
		return "", errors.New("token: the authorization value is empty")
	}
	scheme, rest, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New("token: the authorization value is not of the form \"Bearer <token>\" (another scheme, or a token without one)")
	}
	tok := strings.TrimLeft(rest, " ")
	if tok == "" {
		return "", errors.New("token: the authorization value \"Bearer\" carries no token")
	}
	if !b64token(tok) {
		return "", errors.New("token: the bearer token is not one b64token (RFC 6750 §2.1: letters, digits, -._~+/ then = padding, no spaces)")
	}
	return tok, nil
}

// FromRaw returns the token of a header that carries it bare, given all
// of its values: Istio 1.1's istio_sds_credentail_header-bin, which
// Envoy's file_based_metadata call credentials fill with the token file's
// content, no scheme (Istio's pilot configured no header_prefix, and its
// node agent used the value as the token). Whitespace around it (a
// file's final newline) is dropped; the rest must be one b64token. No
// values at all is ErrNoToken.
func FromRaw(header string, values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", ErrNoToken
	case 1:
	default:
		return "", fmt.Errorf("token: %d %s values; send one", len(values), header)
	}
	tok := strings.TrimSpace(values[0])
	if tok == "" {
		return "", fmt.Errorf("token: %s is empty", header)
	}
	if !b64token(tok) {
		return "", fmt.Errorf("token: %s is not one bare token (RFC 6750 b64token: letters, digits, -._~+/ then = padding, no scheme, no spaces)", header)
	}
	return tok, nil
}

// b64token reports whether s matches RFC 6750's
// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func b64token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}
