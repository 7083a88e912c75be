package token_test

import (
	"errors"
	"testing"
	"time"

	"github.com/wardenmesh/warden/token"
)

// FuzzVerify: parsing and verifying any string never panics; failures
// wrap ErrInvalid; a success can only be a token the issuer signed.
// Seeds: testdata/fuzz/FuzzVerify.
func FuzzVerify(f *testing.F) {
	good, v := mintedToken(f, token.ServiceAccount{Namespace: "default", Name: "sleep"})
	f.Add(good)
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := v.Verify(raw)
		if err != nil {
			if !errors.Is(err, token.ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if got.Namespace == "" || got.Name == "" {
			t.Fatalf("verified a token with no service account: %+v", got)
		}
	})
}

// mintedToken is a token for sa from a new issuer, and a verifier that
// trusts it (both on a fixed clock).
func mintedToken(t testing.TB, sa token.ServiceAccount) (string, *token.Verifier) {
	t.Helper()
	clock := &fixedClock{t0}
	iss := newIssuer(t, "warden", clock)
	tok, err := iss.Mint(sa, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok, &token.Verifier{Issuer: "warden", Keys: iss.KeySet(), Clock: clock}
}
