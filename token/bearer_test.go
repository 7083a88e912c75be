package token_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/token"
)

func TestFromAuthorization(t *testing.T) {
	t.Parallel()
	const (
		notBearer = `token: the authorization value is not of the form "Bearer <token>" (another scheme, or a token without one)`
		noToken   = `token: the authorization value "Bearer" carries no token`
		notOne    = "token: the bearer token is not one b64token (RFC 6750 §2.1: letters, digits, -._~+/ then = padding, no spaces)"
	)
	for _, c := range []struct {
		values []string
		want   string // the token, or the whole error
	}{
		{[]string{"Bearer abc.def-_~+/=="}, "abc.def-_~+/=="},
		{[]string{"bearer abc"}, "abc"},
		{[]string{"BEARER abc"}, "abc"},
		{[]string{"Bearer   abc"}, "abc"},  // 1*SP
		{[]string{" Bearer abc\t"}, "abc"}, // OWS around the value
		{nil, "token: none sent"},
		{[]string{"Bearer a", "Bearer b"}, "token: 2 authorization values; send one"},
		{[]string{""}, "token: the authorization value is empty"},
		{[]string{"Basic x"}, notBearer},
		{[]string{"Basic dXNlcjpwYXNz"}, notBearer},
		{[]string{"abc.def.ghi"}, notBearer},
		{[]string{"Bearerabc"}, notBearer},
		{[]string{"Bearer\tabc"}, notBearer},
		{[]string{"Bearer"}, noToken},
		{[]string{"Bearer "}, noToken},
		{[]string{"Bearer a b"}, notOne},
		{[]string{"Bearer a,b"}, notOne},
		{[]string{"Bearer ===="}, notOne},
		{[]string{"Bearer a=b"}, notOne},
		{[]string{"Bearer a\x00"}, notOne},
	} {
		got, err := token.FromAuthorization(c.values)
		if err != nil {
			got = err.Error()
		}
		if got != c.want {
			t.Errorf("FromAuthorization(%q) = %q, want %q", c.values, got, c.want)
		}
	}
	if _, err := token.FromAuthorization(nil); !errors.Is(err, token.ErrNoToken) {
		t.Errorf("no values: %v, want ErrNoToken", err)
	}
}

func TestFromRaw(t *testing.T) {
	t.Parallel()
	const h = "istio_sds_credentail_header-bin"
	for _, c := range []struct {
		values []string
		want   string
	}{
		{[]string{"abc.def"}, "abc.def"},
		{[]string{"abc.def\n"}, "abc.def"}, // a token file's final newline
		{nil, "token: none sent"},
		{[]string{"a", "b"}, "token: 2 istio_sds_credentail_header-bin values; send one"},
		{[]string{""}, "token: istio_sds_credentail_header-bin is empty"},
		{[]string{" \n"}, "token: istio_sds_credentail_header-bin is empty"},
		{[]string{"Bearer abc"}, "token: istio_sds_credentail_header-bin is not one bare token (RFC 6750 b64token: letters, digits, -._~+/ then = padding, no scheme, no spaces)"},
		{[]string{"Basic x"}, "token: istio_sds_credentail_header-bin is not one bare token (RFC 6750 b64token: letters, digits, -._~+/ then = padding, no scheme, no spaces)"},
	} {
		got, err := token.FromRaw(h, c.values)
		if err != nil {
			got = err.Error()
		}
		if got != c.want {
			t.Errorf("FromRaw(%q) = %q, want %q", c.values, got, c.want)
		}
	}
}

// FuzzFromAuthorization: any value either yields a token that is one
// b64token and, sent back as "Bearer <token>", parses to itself, or is
// refused without echoing the value.
func FuzzFromAuthorization(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer a.b.c", "Basic x", "Bearer", "Bearer a b", "Bearer ==", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tok, err := token.FromAuthorization([]string{v})
		if err != nil {
			if len(v) > 8 && strings.Contains(err.Error(), v) {
				t.Fatalf("the error echoes the value: %v", err)
			}
			return
		}
		if tok == "" || strings.ContainsAny(tok, " \t\r\n,;\"") {
			t.Fatalf("%q gave token %q", v, tok)
		}
		again, err := token.FromAuthorization([]string{"Bearer " + tok})
		if err != nil || again != tok {
			t.Fatalf("%q: token %q does not round-trip: %q, %v", v, tok, again, err)
		}
	})
}
