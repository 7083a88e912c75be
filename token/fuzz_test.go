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
	clock := &fixedClock{t0}
	iss := newIssuer(f, "warden", clock)
	good, err := iss.Mint(token.ServiceAccount{Namespace: "default", Name: "sleep"}, nil, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	v := &token.Verifier{Issuer: "warden", Keys: iss.KeySet(), Clock: clock}
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
