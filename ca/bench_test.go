package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// benchKeyTypes are the key types the issue asks to measure; the CA and
// the workloads use the same one.
var benchKeyTypes = []ca.KeyType{ca.ECDSAP256, ca.RSA2048}

// BenchmarkSign measures the CA core on all cores: CSR parse and policy
// checks, CSR signature verification, leaf signing (through cfssl and
// crypto/x509, which re-verifies its own signature), and chain assembly.
// It reports certs/s; compare with BenchmarkCryptoBound.
func BenchmarkSign(b *testing.B) {
	for _, kt := range benchKeyTypes {
		b.Run(string(kt), func(b *testing.B) {
			a := catest.Authority(b, catest.Root(b, ca.CAOptions{KeyType: kt}))
			csrs := make([][]byte, 32)
			for i := range csrs {
				csrs[i] = catest.CSR(b, catest.Key(b, kt), nil)
			}
			id := catest.ID("bench", "worker")
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := a.Sign(ca.SignRequest{CSR: csrs[i%len(csrs)], ID: id}); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
		})
	}
}

// BenchmarkCryptoBound is the physical limit of a CA on this machine, on
// all cores: one signature verification (the CSR's) plus one signature
// (the certificate's) per certificate, with nothing else. The
// "+selfcheck" variant adds the verification crypto/x509.CreateCertificate
// performs on every signature it makes, which no Go CA can avoid.
func BenchmarkCryptoBound(b *testing.B) {
	for _, kt := range benchKeyTypes {
		for _, selfcheck := range []bool{false, true} {
			name := string(kt) + "/verify+sign"
			if selfcheck {
				name += "+selfcheck"
			}
			b.Run(name, func(b *testing.B) {
				caKey := catest.Key(b, kt)
				wlKey := catest.Key(b, kt)
				digest := sha256.Sum256([]byte("tbs bytes of a certificate request"))
				sig, err := wlKey.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if !verify(wlKey.Public(), digest[:], sig) {
							b.Error("verify failed")
							return
						}
						s, err := caKey.Sign(rand.Reader, digest[:], crypto.SHA256)
						if err != nil {
							b.Error(err)
							return
						}
						if selfcheck && !verify(caKey.Public(), digest[:], s) {
							b.Error("self-check failed")
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
			})
		}
	}
}

func verify(pub crypto.PublicKey, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	}
	return false
}

// BenchmarkParseCSR compares crypto/x509's CSR parser with the signing
// path's (requests with a SPIFFE URI SAN, as workloads send).
func BenchmarkParseCSR(b *testing.B) {
	for _, kt := range benchKeyTypes {
		csr, err := ca.NewCSR(catest.Key(b, kt), catest.ID("bench", "worker"))
		if err != nil {
			b.Fatal(err)
		}
		block, _ := pem.Decode(csr)
		b.Run("x509/"+string(kt), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := x509.ParseCertificateRequest(block.Bytes); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("workload/"+string(kt), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := ca.ParseWorkloadCSR(block.Bytes); !ok {
					b.Fatal("not taken")
				}
			}
		})
	}
}
