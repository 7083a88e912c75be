package vault_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/vault"
)

// fixedKey is the intermediate key of the parsing tests. It is derived
// from a constant so that every fuzzing worker (a process of its own)
// shares it: a generated seed certificate then matches the CSR in all of
// them, and mutations of it reach the success path.
func fixedKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	d := sha256.Sum256([]byte("warden ca/vault parse tests"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fixedCSR(t testing.TB) *x509.CertificateRequest {
	t.Helper()
	csr, err := ca.ParseCSR(catest.CSR(t, fixedKey(t), &x509.CertificateRequest{Subject: catest.TrustDomainSubject()}))
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// issue makes a certificate for pub, signed by parent's key (self-signed
// when parent is nil), as PEM.
func issue(t testing.TB, cn string, pub crypto.PublicKey, isCA bool, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, string) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  isCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// pkiFixture is a root, an intermediate under it, and certificates under
// either for the fixed key, as PEM: the pieces of Vault's answers.
type pkiFixture struct {
	root, mid                       *x509.Certificate
	rootPEM, midPEM                 string
	underRoot, underMid, notCA, key string // certificates for the fixed key, except key: another key's
}

func newPKIFixture(t testing.TB) pkiFixture {
	t.Helper()
	var f pkiFixture
	rootKey, midKey := catest.Key(t, ca.ECDSAP256), catest.Key(t, ca.ECDSAP256)
	f.root, f.rootPEM = issue(t, "Vault Root", rootKey.Public(), true, nil, rootKey)
	f.mid, f.midPEM = issue(t, "Vault Intermediate", midKey.Public(), true, f.root, rootKey)
	pub := fixedKey(t).Public()
	_, f.underRoot = issue(t, "warden intermediate CA", pub, true, f.root, rootKey)
	_, f.underMid = issue(t, "warden intermediate CA", pub, true, f.mid, midKey)
	_, f.notCA = issue(t, "warden intermediate CA", pub, false, f.root, rootKey)
	_, f.key = issue(t, "warden intermediate CA", catest.Key(t, ca.ECDSAP256).Public(), true, f.root, rootKey)
	return f
}

// body is a sign-intermediate response as Vault sends it.
func body(t testing.TB, data map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"request_id": "1", "data": data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parse decodes a response body the way vault/api does, then parses it.
func parse(b []byte, csr *x509.CertificateRequest) (*api.Secret, *x509.Certificate, []*x509.Certificate, error) {
	s, err := api.ParseSecret(bytes.NewReader(b))
	if err != nil || s == nil {
		return nil, nil, nil, err
	}
	cert, chain, err := vault.ParseSignResponse(s.Data, csr)
	return s, cert, chain, err
}

// TestParseSignResponse: Vault's answer shapes give the intermediate and
// what lies between it and the root; malformed answers are errors naming
// the field.
func TestParseSignResponse(t *testing.T) {
	t.Parallel()
	f := newPKIFixture(t)
	csr := fixedCSR(t)
	for _, tc := range []struct {
		name      string
		data      map[string]any
		wantChain []*x509.Certificate
		wantErr   string
	}{
		{"root signs: ca_chain is the root", map[string]any{"certificate": f.underRoot, "issuing_ca": f.rootPEM, "ca_chain": []any{f.rootPEM}}, nil, ""},
		{"issuing_ca only", map[string]any{"certificate": f.underRoot, "issuing_ca": f.rootPEM}, nil, ""},
		{"empty ca_chain falls back to issuing_ca", map[string]any{"certificate": f.underMid, "issuing_ca": f.midPEM, "ca_chain": []any{}}, []*x509.Certificate{f.mid}, ""},
		{"ca_chain starts with the certificate", map[string]any{"certificate": f.underMid, "issuing_ca": f.midPEM, "ca_chain": []any{f.underMid, f.midPEM, f.rootPEM}}, []*x509.Certificate{f.mid}, ""},
		{"no data", nil, nil, "empty response"},
		{"no certificate", map[string]any{"issuing_ca": f.rootPEM}, nil, "certificate: missing from Vault's response"},
		{"certificate not a string", map[string]any{"certificate": []any{f.underRoot}}, nil, "certificate: a []interface {}, want a PEM string"},
		{"certificate truncated", map[string]any{"certificate": f.underRoot[:100]}, nil, "certificate: no PEM certificate found (file truncated or not PEM)"},
		{"certificate is a CSR", map[string]any{"certificate": string(catest.CSR(t, fixedKey(t), &x509.CertificateRequest{}))}, nil, `certificate: PEM block 1 is "CERTIFICATE REQUEST", expected CERTIFICATE`},
		{"certificate for another key", map[string]any{"certificate": f.key, "issuing_ca": f.rootPEM}, nil, "certificate: for another key than the CSR's"},
		{"certificate not a CA", map[string]any{"certificate": f.notCA, "issuing_ca": f.rootPEM}, nil, "certificate: not a CA certificate"},
		{"ca_chain a string", map[string]any{"certificate": f.underRoot, "ca_chain": f.rootPEM}, nil, "ca_chain: a string, want a list of PEM strings"},
		{"ca_chain holds a number", map[string]any{"certificate": f.underRoot, "ca_chain": []any{f.rootPEM, 7}}, nil, "ca_chain[1]: a json.Number, want a PEM string"},
		{"ca_chain holds garbage", map[string]any{"certificate": f.underRoot, "ca_chain": []any{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}, nil, "ca_chain[0]: certificate 1: x509: malformed certificate"},
		{"no ca_chain, no issuing_ca", map[string]any{"certificate": f.underRoot}, nil, "issuing_ca: missing from Vault's response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := body(t, tc.data)
			if tc.data == nil {
				b = []byte(`{"request_id": "1"}`)
			}
			_, cert, chain, err := parse(b, csr)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("got %v, want error %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !cert.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) {
				t.Error("certificate is not for the CSR's key")
			}
			if len(chain) != len(tc.wantChain) {
				t.Fatalf("chain has %d certificates, want %d", len(chain), len(tc.wantChain))
			}
			for i := range chain {
				if !chain[i].Equal(tc.wantChain[i]) {
					t.Errorf("chain[%d] is %s, want %s", i, chain[i].Subject, tc.wantChain[i].Subject)
				}
			}
		})
	}
}

// FuzzSignResponse: any response body, decoded as vault/api does, gives a
// CA certificate for the CSR's key and a chain without roots or that
// certificate, or an error naming the field at fault; never a panic.
// Seeds: the well-formed answers below, generated (certificates in
// testdata would expire), and malformed ones in
// testdata/fuzz/FuzzSignResponse.
func FuzzSignResponse(f *testing.F) {
	p := newPKIFixture(f)
	csr := fixedCSR(f)
	f.Add(body(f, map[string]any{"certificate": p.underRoot, "issuing_ca": p.rootPEM, "ca_chain": []any{p.rootPEM}, "serial_number": "01"}))
	f.Add(body(f, map[string]any{"certificate": p.underMid, "issuing_ca": p.midPEM, "ca_chain": []any{p.underMid, p.midPEM, p.rootPEM}}))
	f.Add(body(f, map[string]any{"certificate": p.underRoot, "issuing_ca": p.rootPEM}))
	f.Add(body(f, map[string]any{"certificate": p.notCA, "issuing_ca": p.rootPEM}))
	f.Add(body(f, map[string]any{"certificate": p.key, "issuing_ca": p.rootPEM}))
	fields := []string{"empty response", "certificate: ", "ca_chain: ", "ca_chain[", "issuing_ca: "}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, cert, chain, err := parse(b, csr)
		if s == nil {
			return // not JSON: vault/api fails before warden sees it
		}
		if err != nil {
			for _, p := range fields {
				if strings.HasPrefix(err.Error(), p) {
					return
				}
			}
			t.Fatalf("error names no field: %v", err)
		}
		if cert == nil || !cert.IsCA || !cert.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) {
			t.Fatal("accepted a certificate that is not a CA for the CSR's key")
		}
		for i, c := range chain {
			if c == nil || c.Equal(cert) || string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil {
				t.Fatalf("chain[%d] is nil, the certificate itself or a root", i)
			}
		}
	})
}

// TestParseIssuerRoot: an issuer's JSON gives the root its chain ends at:
// the issuer itself when self-signed, else the self-signed certificate of
// its ca_chain, or none; malformed answers are errors naming the field.
func TestParseIssuerRoot(t *testing.T) {
	t.Parallel()
	f := newPKIFixture(t)
	for _, tc := range []struct {
		name    string
		data    map[string]any
		want    *x509.Certificate
		wantErr string
	}{
		{"root issuer", map[string]any{"certificate": f.rootPEM, "ca_chain": []any{f.rootPEM}}, f.root, ""},
		{"intermediate issuer", map[string]any{"certificate": f.midPEM, "ca_chain": []any{f.midPEM, f.rootPEM}}, f.root, ""},
		{"intermediate without its root", map[string]any{"certificate": f.midPEM, "ca_chain": []any{f.midPEM}}, nil, ""},
		{"no certificate", map[string]any{}, nil, "certificate: missing from Vault's response"},
		{"bad chain", map[string]any{"certificate": f.midPEM, "ca_chain": []any{"nope"}}, nil, "ca_chain[0]: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vault.ParseIssuerRoot(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || (got == nil) != (tc.want == nil) || got != nil && !got.Equal(tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// FuzzIssuerRoot: whatever an issuer's JSON holds, the result is a
// self-signed CA, nothing, or an error naming the field.
func FuzzIssuerRoot(f *testing.F) {
	p := newPKIFixture(f)
	f.Add(body(f, map[string]any{"certificate": p.rootPEM, "ca_chain": []any{p.rootPEM}, "issuer_id": "x"}))
	f.Add(body(f, map[string]any{"certificate": p.midPEM, "ca_chain": []any{p.midPEM, p.rootPEM}}))
	f.Add(body(f, map[string]any{"certificate": p.underMid, "ca_chain": []any{p.underMid}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := api.ParseSecret(bytes.NewReader(b))
		if err != nil || s == nil {
			return
		}
		root, err := vault.ParseIssuerRoot(s.Data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "certificate: ") && !strings.HasPrefix(err.Error(), "ca_chain[") {
				t.Fatalf("error names no field: %v", err)
			}
			return
		}
		if root != nil && (!root.IsCA || string(root.RawIssuer) != string(root.RawSubject) || root.CheckSignatureFrom(root) != nil) {
			t.Fatal("returned a root that is not a self-signed CA")
		}
	})
}
