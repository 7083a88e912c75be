package token_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/wardenmesh/warden/token"
)

// BenchmarkVerify is the uncached token check of a scale-up (ES256): the
// "es256" sub-benchmark is the algorithm's own cost, one P-256
// verification of a digest, for comparison.
func BenchmarkVerify(b *testing.B) {
	tok, v := mintedToken(b, token.ServiceAccount{Namespace: "bench", Name: "worker"})
	b.Run("token", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("es256", func(b *testing.B) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		d := sha256.Sum256([]byte(tok))
		sig, _ := ecdsa.SignASN1(rand.Reader, key, d[:])
		for b.Loop() {
			if !ecdsa.VerifyASN1(&key.PublicKey, d[:], sig) {
				b.Fatal("does not verify")
			}
		}
	})
}
