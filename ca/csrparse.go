package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	encasn1 "encoding/asn1"
	"math/big"
	"net"
	"net/url"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// The signing path's CSR parser. crypto/x509.ParseCertificateRequest
// decodes through reflection (encoding/asn1), which cost a CA about a
// tenth of its CPU per certificate. parseWorkloadCSR reads the shapes
// workloads send — a P-256 key with an ECDSA-SHA256 signature or an RSA
// key with a SHA256-RSA one (Istio's agent's default), a subject of
// printable or UTF-8 strings, and at most a subjectAltName extension
// request — directly from the DER, and hands everything else to
// crypto/x509. It accepts only what crypto/x509 accepts and fills the
// same fields with the same values (FuzzWorkloadCSR and
// TestWorkloadCSRMatchesX509 check both), except Attributes, the
// deprecated field nothing in warden reads.

// The DER encodings the fast path compares byte for byte.
var (
	// AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
	p256SPKIAlgorithm = []byte{0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	// AlgorithmIdentifier { rsaEncryption, NULL }
	rsaSPKIAlgorithm = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00}
	// AlgorithmIdentifier { sha256WithRSAEncryption, NULL }
	rsaSHA256Algorithm = []byte{0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00}
	// AlgorithmIdentifier { ecdsa-with-SHA256 } (parameters absent)
	ecdsaSHA256Algorithm = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	// PKCS #9 extensionRequest, 1.2.840.113549.1.9.14
	extensionRequestOID = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e}
	// id-ce-subjectAltName, 2.5.29.17
	subjectAltNameOID = []byte{0x55, 0x1d, 0x11}
	// INTEGER 0 (the CSR's version)
	csrVersion0 = []byte{0x02, 0x01, 0x00}
)

// parseCSRSigning is ParseCSR for the signing path: the fast parser
// where it applies, crypto/x509 otherwise (and for every error message).
func parseCSRSigning(data []byte) (*x509.CertificateRequest, error) {
	der, err := csrDER(data)
	if err != nil {
		return nil, err
	}
	if csr, ok := parseWorkloadCSR(der); ok {
		return csr, nil
	}
	return parseCSRDER(der)
}

// parseWorkloadCSR parses der when it has the workload shape; ok is false
// otherwise, and for anything malformed.
func parseWorkloadCSR(der []byte) (csr *x509.CertificateRequest, ok bool) {
	in := cryptobyte.String(der)
	var whole, rawTBS, tbs, version, rawSubject, rawSPKI, spki, spkiAlg, attrs, sigAlgDER cryptobyte.String
	if !in.ReadASN1(&whole, asn1.SEQUENCE) || !in.Empty() ||
		!whole.ReadASN1Element(&rawTBS, asn1.SEQUENCE) {
		return nil, false
	}
	tbs = rawTBS
	if !tbs.ReadASN1(&tbs, asn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&version, asn1.INTEGER) || !bytes.Equal(version, csrVersion0) ||
		!tbs.ReadASN1Element(&rawSubject, asn1.SEQUENCE) ||
		!tbs.ReadASN1Element(&rawSPKI, asn1.SEQUENCE) ||
		!tbs.ReadASN1(&attrs, asn1.Tag(0).Constructed().ContextSpecific()) || !tbs.Empty() {
		return nil, false
	}
	var sigBits encasn1.BitString
	if !whole.ReadASN1Element(&sigAlgDER, asn1.SEQUENCE) ||
		!whole.ReadASN1BitString(&sigBits) || sigBits.BitLength%8 != 0 || !whole.Empty() {
		return nil, false
	}

	// SubjectPublicKeyInfo: a P-256 point (uncompressed) signing with
	// ECDSA-SHA256, or an RSA key signing with SHA256-RSA.
	spki = rawSPKI
	var keyBits encasn1.BitString
	if !spki.ReadASN1(&spki, asn1.SEQUENCE) ||
		!spki.ReadASN1Element(&spkiAlg, asn1.SEQUENCE) ||
		!spki.ReadASN1BitString(&keyBits) || keyBits.BitLength%8 != 0 || !spki.Empty() {
		return nil, false
	}
	var (
		pub    crypto.PublicKey
		pubAlg x509.PublicKeyAlgorithm
		sigAlg x509.SignatureAlgorithm
	)
	switch {
	case bytes.Equal(spkiAlg, p256SPKIAlgorithm) && bytes.Equal(sigAlgDER, ecdsaSHA256Algorithm):
		k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), keyBits.Bytes)
		if err != nil {
			return nil, false
		}
		pub, pubAlg, sigAlg = k, x509.ECDSA, x509.ECDSAWithSHA256
	case bytes.Equal(spkiAlg, rsaSPKIAlgorithm) && bytes.Equal(sigAlgDER, rsaSHA256Algorithm):
		k, ok := parseRSAKey(keyBits.Bytes)
		if !ok {
			return nil, false
		}
		pub, pubAlg, sigAlg = k, x509.RSA, x509.SHA256WithRSA
	default:
		return nil, false
	}

	csr = &x509.CertificateRequest{
		Raw:                      der,
		RawTBSCertificateRequest: rawTBS,
		RawSubjectPublicKeyInfo:  rawSPKI,
		RawSubject:               rawSubject,
		Signature:                sigBits.Bytes,
		SignatureAlgorithm:       sigAlg,
		PublicKeyAlgorithm:       pubAlg,
		PublicKey:                pub,
	}
	rdns, ok := parseSubject(rawSubject)
	if !ok {
		return nil, false
	}
	csr.Subject.FillFromRDNSequence(&rdns)
	if !parseExtensionRequests(attrs, csr) {
		return nil, false
	}
	return csr, true
}

// parseRSAKey reads an RSAPublicKey (PKCS #1) as crypto/x509 does: a
// positive modulus and exponent, here with nothing after them.
func parseRSAKey(der cryptobyte.String) (*rsa.PublicKey, bool) {
	var seq cryptobyte.String
	n, e := new(big.Int), 0
	if !der.ReadASN1(&seq, asn1.SEQUENCE) || !der.Empty() ||
		!seq.ReadASN1Integer(n) || !seq.ReadASN1Integer(&e) || !seq.Empty() ||
		n.Sign() <= 0 || e <= 0 {
		return nil, false
	}
	return &rsa.PublicKey{N: n, E: e}, true
}

// parseSubject reads a Name whose attribute values are all PrintableString
// or UTF8String (what encoding/asn1 turns into Go strings).
func parseSubject(raw cryptobyte.String) (pkix.RDNSequence, bool) {
	var seq cryptobyte.String
	if !raw.ReadASN1(&seq, asn1.SEQUENCE) || !raw.Empty() {
		return nil, false
	}
	var rdns pkix.RDNSequence
	for !seq.Empty() {
		var set cryptobyte.String
		if !seq.ReadASN1(&set, asn1.SET) || set.Empty() {
			return nil, false
		}
		var rdn pkix.RelativeDistinguishedNameSET
		for !set.Empty() {
			var atv, value cryptobyte.String
			var oid encasn1.ObjectIdentifier
			var tag asn1.Tag
			if !set.ReadASN1(&atv, asn1.SEQUENCE) || !atv.ReadASN1ObjectIdentifier(&oid) ||
				!atv.ReadAnyASN1(&value, &tag) || !atv.Empty() {
				return nil, false
			}
			switch tag {
			case asn1.PrintableString:
				for _, b := range value {
					if !printable(b) {
						return nil, false
					}
				}
			case asn1.UTF8String:
				if !utf8.Valid(value) {
					return nil, false
				}
			default:
				return nil, false
			}
			rdn = append(rdn, pkix.AttributeTypeAndValue{Type: oid, Value: string(value)})
		}
		rdns = append(rdns, rdn)
	}
	return rdns, true
}

// printable is encoding/asn1's PrintableString alphabet as it parses one
// (with '*' and '&', which it tolerates).
func printable(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' ||
		'\'' <= b && b <= ')' || '+' <= b && b <= '/' || b == ' ' || b == ':' || b == '=' || b == '?' ||
		b == '*' || b == '&'
}

// parseExtensionRequests reads the attributes: extensionRequest ones only,
// each with one value, whose extensions are at most one subjectAltName.
func parseExtensionRequests(attrs cryptobyte.String, csr *x509.CertificateRequest) bool {
	for !attrs.Empty() {
		var attr, oid, values, exts cryptobyte.String
		if !attrs.ReadASN1(&attr, asn1.SEQUENCE) ||
			!attr.ReadASN1(&oid, asn1.OBJECT_IDENTIFIER) || !bytes.Equal(oid, extensionRequestOID) ||
			!attr.ReadASN1(&values, asn1.SET) || !attr.Empty() ||
			!values.ReadASN1(&exts, asn1.SEQUENCE) || !values.Empty() {
			return false
		}
		for !exts.Empty() {
			var ext, extOID, value cryptobyte.String
			var critical bool
			if !exts.ReadASN1(&ext, asn1.SEQUENCE) ||
				!ext.ReadASN1(&extOID, asn1.OBJECT_IDENTIFIER) || !bytes.Equal(extOID, subjectAltNameOID) ||
				ext.PeekASN1Tag(asn1.BOOLEAN) && !ext.ReadASN1Boolean(&critical) ||
				!ext.ReadASN1(&value, asn1.OCTET_STRING) || !ext.Empty() ||
				len(csr.Extensions) > 0 { // a second one is crypto/x509's error to report
				return false
			}
			csr.Extensions = append(csr.Extensions, pkix.Extension{Id: encasn1.ObjectIdentifier{2, 5, 29, 17}, Critical: critical, Value: value})
			if !parseSANs(value, csr) {
				return false
			}
		}
	}
	return true
}

// parseSANs reads GeneralNames of the four kinds crypto/x509 keeps, with
// its checks.
func parseSANs(der cryptobyte.String, csr *x509.CertificateRequest) bool {
	var names cryptobyte.String
	if !der.ReadASN1(&names, asn1.SEQUENCE) || !der.Empty() {
		return false
	}
	for !names.Empty() {
		var name cryptobyte.String
		var tag asn1.Tag
		if !names.ReadAnyASN1(&name, &tag) {
			return false
		}
		switch tag {
		case asn1.Tag(1).ContextSpecific(): // rfc822Name
			if !ia5(name) {
				return false
			}
			csr.EmailAddresses = append(csr.EmailAddresses, string(name))
		case asn1.Tag(2).ContextSpecific(): // dNSName
			if !ia5(name) {
				return false
			}
			csr.DNSNames = append(csr.DNSNames, string(name))
		case asn1.Tag(6).ContextSpecific(): // uniformResourceIdentifier
			if !ia5(name) {
				return false
			}
			u, err := url.Parse(string(name))
			if err != nil || !sanHostValid(u.Host) {
				return false
			}
			csr.URIs = append(csr.URIs, u)
		case asn1.Tag(7).ContextSpecific(): // iPAddress
			if len(name) != net.IPv4len && len(name) != net.IPv6len {
				return false
			}
			csr.IPAddresses = append(csr.IPAddresses, net.IP(name))
		default:
			return false
		}
	}
	return true
}

func ia5(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// sanHostValid is what crypto/x509 asks of a URI SAN's host: empty, or
// labels of printable ASCII, none empty, no trailing dot.
func sanHostValid(h string) bool {
	if h == "" {
		return true
	}
	label := 0
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case c < 33 || c > 126:
			return false
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		default:
			label++
		}
	}
	return label > 0
}
