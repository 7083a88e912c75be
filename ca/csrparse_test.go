package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// csrDiff lists the fields in which the fast parser's CSR differs from
// crypto/x509's (Attributes aside: deprecated, and not filled).
func csrDiff(got, want *x509.CertificateRequest) string {
	g, w := *got, *want
	g.Attributes, w.Attributes = nil, nil //lint:ignore SA1019 the deprecated field is the one left out
	var out string
	if gk, ok := g.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !gk.Equal(w.PublicKey) {
		out += fmt.Sprintf("\n  PublicKey: got %v, want %v", g.PublicKey, w.PublicKey)
	}
	g.PublicKey, w.PublicKey = nil, nil
	gv, wv := reflect.ValueOf(g), reflect.ValueOf(w)
	for i := range gv.NumField() {
		gf, wf := gv.Field(i).Interface(), wv.Field(i).Interface()
		if !reflect.DeepEqual(gf, wf) && !(emptySlice(gv.Field(i)) && emptySlice(wv.Field(i))) {
			out += fmt.Sprintf("\n  %s: got %#v, want %#v", gv.Type().Field(i).Name, gf, wf)
		}
	}
	return out
}

func emptySlice(v reflect.Value) bool { return v.Kind() == reflect.Slice && v.Len() == 0 }

// compareWithX509 parses der both ways: where the fast parser accepts,
// crypto/x509 must accept too, with the same fields.
func compareWithX509(t *testing.T, der []byte) bool {
	t.Helper()
	fast, ok := ca.ParseWorkloadCSR(der)
	if !ok {
		return false
	}
	std, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("the fast parser accepted a CSR crypto/x509 refuses (%v):\n%x", err, der)
	}
	if d := csrDiff(fast, std); d != "" {
		t.Fatalf("the fast parser's CSR differs from crypto/x509's:%s\nDER %x", d, der)
	}
	return true
}

// randomCSRTemplate is a request of the kinds workloads and tools send:
// no subject or a random one (Istio's agent sends O=""), a SPIFFE URI
// SAN or not, DNS, IP and email SANs, the SAN extension critical (as
// Istio marks it with an empty subject) or not.
func randomCSRTemplate(r *mrand.Rand) *x509.CertificateRequest {
	tmpl := &x509.CertificateRequest{}
	str := func(alphabet string, n int) string {
		b := make([]rune, n)
		as := []rune(alphabet)
		for i := range b {
			b[i] = as[r.IntN(len(as))]
		}
		return string(b)
	}
	const printableChars = "abcXYZ019 '()+,-./:=?"
	switch r.IntN(5) {
	case 1:
		tmpl.Subject.Organization = []string{""}
	case 2:
		tmpl.Subject.CommonName = str(printableChars, r.IntN(20))
	case 3:
		tmpl.Subject.CommonName = str("héllo wörld ✓", 1+r.IntN(10)) // UTF8String
		tmpl.Subject.Organization = []string{str(printableChars, 1+r.IntN(8)), str(printableChars, 1+r.IntN(8))}
		tmpl.Subject.Country = []string{"DE"}
	case 4:
		tmpl.Subject.ExtraNames = []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{2, 5, 4, 11}, Value: str(printableChars, 1+r.IntN(8))}}
	}
	if r.IntN(4) > 0 {
		tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/" + str("abcdef-", 1+r.IntN(12)) + "/sa/" + str("xyz0", 1+r.IntN(8))}}
	}
	for range r.IntN(3) {
		tmpl.DNSNames = append(tmpl.DNSNames, str("abcdefgh", 1+r.IntN(10))+".svc.cluster.local")
	}
	for range r.IntN(3) {
		ip := make(net.IP, []int{4, 16}[r.IntN(2)])
		for i := range ip {
			ip[i] = byte(r.IntN(256))
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	if r.IntN(8) == 0 {
		tmpl.EmailAddresses = []string{str("abc", 1+r.IntN(6)) + "@example.com"}
	}
	if r.IntN(3) == 0 && len(tmpl.URIs)+len(tmpl.DNSNames)+len(tmpl.IPAddresses)+len(tmpl.EmailAddresses) > 0 {
		// The SAN extension marked critical, as Istio's agent does.
		ext := catest.SANExtension(tmpl.URIs, tmpl.DNSNames, tmpl.IPAddresses, tmpl.EmailAddresses)
		ext.Critical = true
		tmpl.ExtraExtensions = []pkix.Extension{ext}
		tmpl.URIs, tmpl.DNSNames, tmpl.IPAddresses, tmpl.EmailAddresses = nil, nil, nil, nil
	}
	return tmpl
}

// TestWorkloadCSRMatchesX509: for thousands of random requests with P-256
// and RSA (2048 and 4096) keys the fast parser applies and its CSR equals
// crypto/x509's field by field; requests of other shapes (other keys and
// signature algorithms, extensions other than the SANs, other
// attributes) are left to crypto/x509.
func TestWorkloadCSRMatchesX509(t *testing.T) {
	r := mrand.New(mrand.NewPCG(21, 2026)) // fixed: a failure reproduces
	keys := []crypto.Signer{catest.Key(t, ca.ECDSAP256), catest.Key(t, ca.ECDSAP256), catest.Key(t, ca.ECDSAP256), catest.Key(t, ca.RSA2048)}
	rsa4096 := catest.Key(t, ca.RSA4096) // one request in 64 (slow to sign)
	n := 3000
	if testing.Short() {
		n = 300
	}
	for i := range n {
		key := keys[i%len(keys)]
		if i%64 == 63 {
			key = rsa4096
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, randomCSRTemplate(r), key)
		if err != nil {
			t.Fatal(err)
		}
		if !compareWithX509(t, der) {
			t.Fatalf("request %d: the fast parser did not apply to a workload CSR:\n%s", i, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		}
	}
	// Left to crypto/x509.
	p256 := keys[0]
	others := map[string]struct {
		key  crypto.Signer
		tmpl *x509.CertificateRequest
	}{
		"P-384 key":        {catest.Key(t, ca.ECDSAP384), &x509.CertificateRequest{}},
		"RSA with SHA-384": {catest.Key(t, ca.RSA2048), &x509.CertificateRequest{SignatureAlgorithm: x509.SHA384WithRSA}},
		"RSA-PSS":          {catest.Key(t, ca.RSA2048), &x509.CertificateRequest{SignatureAlgorithm: x509.SHA256WithRSAPSS}},
		"ECDSA-SHA384":     {p256, &x509.CertificateRequest{SignatureAlgorithm: x509.ECDSAWithSHA384}},
		"key usage ext":    {p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Value: []byte{3, 2, 7, 128}}}}},
		"INTEGER in the subject": {p256, &x509.CertificateRequest{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 5}, Value: 42}}}}},
		"challengePassword": {p256, &x509.CertificateRequest{}},
	}
	//lint:ignore SA1019 building the deprecated field on purpose
	others["challengePassword"].tmpl.Attributes = []pkix.AttributeTypeAndValueSET{{
		Type: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}, Value: [][]pkix.AttributeTypeAndValue{{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "pw"}}}}}
	for name, c := range others {
		der, err := x509.CreateCertificateRequest(rand.Reader, c.tmpl, c.key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if compareWithX509(t, der) {
			t.Errorf("%s: the fast parser took a request it should leave to crypto/x509", name)
		}
		if _, err := x509.ParseCertificateRequest(der); err != nil {
			t.Errorf("%s: crypto/x509: %v", name, err)
		}
	}
}

// FuzzWorkloadCSR: whatever DER the fast parser accepts, crypto/x509
// accepts too and parses to the same fields. Seeds:
// testdata/fuzz/FuzzWorkloadCSR, and random requests.
func FuzzWorkloadCSR(f *testing.F) {
	r := mrand.New(mrand.NewPCG(1, 2))
	key := catest.Key(f, ca.ECDSAP256)
	for range 16 {
		der, err := x509.CreateCertificateRequest(rand.Reader, randomCSRTemplate(r), key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, der []byte) { compareWithX509(t, der) })
}

// TestWorkloadCSRSeeds: the seed corpus (made with openssl req) holds
// requests the fast parser takes, so that fuzzing starts from its
// accepting paths, and near misses it must leave to crypto/x509: a P-384
// or RSA key, an otherName or key usage request, SHA-384, a truncation.
func TestWorkloadCSRSeeds(t *testing.T) {
	taken := map[string]bool{
		"01-istio-agent": true, "02-empty-subject": true, "03-dns-ip": true, "04-email": true, "05-utf8-subject": true, "06-no-extensions": true,
		"07-p384": false, "08-rsa": true, "09-othername": false, "10-keyusage": false, "11-sha384": false, "12-truncated": false,
	}
	for name, want := range taken {
		p := filepath.Join("testdata/fuzz/FuzzWorkloadCSR", name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// go test fuzz v1 / []byte("...")
		_, lit, found := strings.Cut(string(b), "[]byte(")
		if !found {
			t.Fatalf("%s: not a fuzz corpus file", p)
		}
		var der []byte
		if _, err := fmt.Sscanf(strings.TrimSuffix(strings.TrimSpace(lit), ")"), "%q", &der); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if got := compareWithX509(t, der); got != want {
			t.Errorf("%s: taken by the fast parser: %t, want %t", name, got, want)
		}
	}
}

// TestWorkloadCSREdges: hand-built requests at the edges of what the two
// parsers accept (subject strings, OID arcs, the critical flag, repeated
// extension requests, URI hosts, SAN kinds). Where the fast parser takes
// one, crypto/x509 must take it too with the same fields; the "taken"
// ones must be taken (they are shapes crypto/x509 accepts).
func TestWorkloadCSREdges(t *testing.T) {
	cn := []byte{0x55, 4, 3}
	empty := edgeName()
	uri := func(u string) []byte { return edgeGN(0x86, u) }
	cases := []struct {
		name  string
		der   []byte
		taken bool
	}{
		{"PrintableString with * and &", edgeCSR(t, edgeName(edgeATV(cn, 0x13, "*.a&b")), nil), true},
		{"PrintableString with @", edgeCSR(t, edgeName(edgeATV(cn, 0x13, "a@b")), nil), false},
		{"UTF8String", edgeCSR(t, edgeName(edgeATV(cn, 0x0c, "wörld")), nil), true},
		{"invalid UTF8String", edgeCSR(t, edgeName(edgeATV(cn, 0x0c, "a\xffb")), nil), false},
		{"IA5String value", edgeCSR(t, edgeName(edgeATV(cn, 0x16, "a@b")), nil), false},
		{"OID arc 2^31-1", edgeCSR(t, edgeName(edgeATV([]byte{0x55, 0x87, 0xff, 0xff, 0xff, 0x7f}, 0x0c, "x")), nil), true},
		{"OID arc 2^31", edgeCSR(t, edgeName(edgeATV([]byte{0x55, 0x88, 0x80, 0x80, 0x80, 0x00}, 0x0c, "x")), nil), false},
		{"OID non-minimal arc", edgeCSR(t, edgeName(edgeATV([]byte{0x55, 0x80, 4}, 0x0c, "x")), nil), false},
		{"OID large first arc", edgeCSR(t, edgeName(edgeATV([]byte{0x88, 0x37, 3}, 0x0c, "x")), nil), true},
		{"empty RDN set", edgeCSR(t, []byte{0x30, 0x02, 0x31, 0x00}, nil), false},
		{"critical FALSE explicit", edgeCSR(t, empty, edgeExtReq(edgeSAN([]byte{1, 1, 0}, uri("spiffe://td/ns/a")))), true},
		{"critical TRUE", edgeCSR(t, empty, edgeExtReq(edgeSAN([]byte{1, 1, 0xff}, uri("spiffe://td/ns/a")))), true},
		{"critical 0x01 (not DER)", edgeCSR(t, empty, edgeExtReq(edgeSAN([]byte{1, 1, 1}, uri("spiffe://td/ns/a")))), false},
		{"two requests, a SAN each", edgeCSR(t, empty, append(edgeExtReq(edgeSAN(nil, edgeGN(0x82, "a"))), edgeExtReq(edgeSAN(nil, edgeGN(0x82, "b")))...)), false},
		{"empty request, then a SAN", edgeCSR(t, empty, append(edgeExtReq(), edgeExtReq(edgeSAN(nil, edgeGN(0x82, "b")))...)), true},
		{"URI host with an empty label", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("spiffe://a..b/x")))), false},
		{"URI host with a trailing dot", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("spiffe://a./x")))), false},
		{"URI host IPv6 and port", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("https://[::1]:80/x")))), true},
		{"URI with userinfo", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("spiffe://u@td/ns")))), true},
		{"URI opaque", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("spiffe:td/ns")))), true},
		{"URI percent-encoded host", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, uri("spiffe://t%64/ns")))), false},
		{"IP of 5 bytes", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, edgeGN(0x87, "12345")))), false},
		{"empty GeneralNames", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil))), true},
		{"DNS name with an 8-bit byte", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, edgeGN(0x82, "a\xffb")))), false},
		{"otherName", edgeCSR(t, empty, edgeExtReq(edgeSAN(nil, []byte{0xa0, 0x03, 0x06, 0x01, 0x00}))), false},
		{"no attributes", edgeCSR(t, empty, nil), true},
		{"RSA", edgeRSACSR(t, rsaSPKIAlgorithm, edgeRSAKey(big.NewInt(0).Lsh(big.NewInt(1), 2047), 65537, nil)), true},
		{"RSA without NULL parameters", edgeRSACSR(t, rsaSPKIAlgorithm[:13:13], edgeRSAKey(big.NewInt(0).Lsh(big.NewInt(1), 2047), 65537, nil)), false},
		{"RSA exponent 0", edgeRSACSR(t, rsaSPKIAlgorithm, edgeRSAKey(big.NewInt(0).Lsh(big.NewInt(1), 2047), 0, nil)), false},
		{"RSA negative modulus", edgeRSACSR(t, rsaSPKIAlgorithm, edgeRSAKey(big.NewInt(-12345), 65537, nil)), false},
		{"RSA key with trailing bytes", edgeRSACSR(t, rsaSPKIAlgorithm, edgeRSAKey(big.NewInt(0).Lsh(big.NewInt(1), 2047), 65537, []byte{2, 1, 0})), false},
	}
	for _, c := range cases {
		if taken := compareWithX509(t, c.der); taken != c.taken {
			_, err := x509.ParseCertificateRequest(c.der)
			t.Errorf("%s: taken by the fast parser: %t, want %t (crypto/x509: %v)", c.name, taken, c.taken, err)
		}
	}
}

// The edge requests' pieces, built by hand: a P-256 key whose signature is
// not checked (parsing never checks it).
func edgeCSR(t *testing.T, subject, attrs []byte) []byte {
	t.Helper()
	pub, err := catest.Key(t, ca.ECDSAP256).Public().(*ecdsa.PublicKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1Int64(0)
			b.AddBytes(subject)
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1})
					b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
				})
				b.AddASN1BitString(pub)
			})
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2})
		})
		b.AddASN1BitString([]byte{1, 2, 3})
	})
	return b.BytesOrPanic()
}

// The RSA SubjectPublicKeyInfo algorithm (rsaEncryption, NULL) as DER.
var rsaSPKIAlgorithm = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00}

// edgeRSACSR is a CSR with an RSA key (algorithm identifier alg, key
// bits key) and a SHA256-RSA signature (not checked).
func edgeRSACSR(t *testing.T, alg, key []byte) []byte {
	t.Helper()
	if alg[1] != byte(len(alg)-2) { // rsaSPKIAlgorithm cut short: fix its length
		alg = append([]byte{0x30, byte(len(alg) - 2)}, alg[2:]...)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1Int64(0)
			b.AddBytes(edgeName())
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(alg)
				b.AddASN1BitString(key)
			})
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(*cryptobyte.Builder) {})
		})
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11})
			b.AddASN1NULL()
		})
		b.AddASN1BitString([]byte{1, 2, 3})
	})
	return b.BytesOrPanic()
}

// edgeRSAKey is an RSAPublicKey, with extra bytes after it when given.
func edgeRSAKey(n *big.Int, e int64, extra []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(n)
		b.AddASN1Int64(e)
	})
	return append(b.BytesOrPanic(), extra...)
}

func edgeExtReq(exts ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14})
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, e := range exts {
					b.AddBytes(e)
				}
			})
		})
	})
	return b.BytesOrPanic()
}

func edgeSAN(critical []byte, names ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{2, 5, 29, 17})
		b.AddBytes(critical)
		b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, n := range names {
					b.AddBytes(n)
				}
			})
		})
	})
	return b.BytesOrPanic()
}

func edgeGN(tag byte, v string) []byte { return append([]byte{tag, byte(len(v))}, v...) }

func edgeName(atvs ...[]byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, a := range atvs {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(a) })
		}
	})
	return b.BytesOrPanic()
}

func edgeATV(oid []byte, tag byte, v string) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(oid) })
		b.AddASN1(cbasn1.Tag(tag), func(b *cryptobyte.Builder) { b.AddBytes([]byte(v)) })
	})
	return b.BytesOrPanic()
}
