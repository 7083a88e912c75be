package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/mail"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// leafSigner issues workload certificates on the hot path: each
// certificate's TBSCertificate is built directly from a template prepared
// once per signing key (issuer name, signature algorithm, the extensions
// that never change), signed with the key's crypto.Signer, and returned
// with its x509.Certificate filled in without parsing it back. The bytes
// equal what crypto/x509 makes from the same template (TestLeafMatchesX509).
//
// crypto/x509 verifies every signature it makes against the issuer's
// public key, to catch a faulty signer. leafSigner does the same always
// for RSA and for signers other than in-memory ECDSA keys (an HSM, a KMS),
// and for one ECDSA certificate in verifyEvery (and the first), whose
// signing code is Go's own; Activate proves each new key by a full
// verification anyway.
type leafSigner struct {
	key    crypto.Signer
	hash   crypto.Hash
	sigAlg x509.SignatureAlgorithm
	algID  []byte // the AlgorithmIdentifier, DER
	issuer *x509.Certificate
	ku     map[bool]encodedExt // KeyUsage extension by "RSA key"
	ekuBC  []encodedExt        // ExtendedKeyUsage and BasicConstraints extensions
	aki    []encodedExt        // AuthorityKeyIdentifier extension (none when the issuer has no SKI)
	akiID  []byte
	every  uint64 // verify one signature in every; 1: all
	count  atomic.Uint64
}

// verifyEvery is the sampling of post-sign checks for in-memory ECDSA keys.
const verifyEvery = 64

var (
	oidKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidEKU         = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidBC          = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSKI         = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAKI         = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidSAN         = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidServerAuth  = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth  = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
	oidECDSASHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSASHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSASHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidRSASHA256   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidRSASHA384   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	oidRSASHA512   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
)

// newLeafSigner prepares the template for m's signing certificate and key.
func newLeafSigner(m *Material) (*leafSigner, error) {
	key := m.Key
	if key == nil {
		return nil, errors.New("ca: no signing key")
	}
	s := &leafSigner{key: key, issuer: m.Cert, every: 1}
	var oid asn1.ObjectIdentifier
	rsaNull := false
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch pub.Curve.Params().BitSize {
		case 256:
			s.hash, s.sigAlg, oid = crypto.SHA256, x509.ECDSAWithSHA256, oidECDSASHA256
		case 384:
			s.hash, s.sigAlg, oid = crypto.SHA384, x509.ECDSAWithSHA384, oidECDSASHA384
		case 521:
			s.hash, s.sigAlg, oid = crypto.SHA512, x509.ECDSAWithSHA512, oidECDSASHA512
		default:
			return nil, fmt.Errorf("ca: unsupported signing curve %s", pub.Curve.Params().Name)
		}
		if _, inMemory := key.(*ecdsa.PrivateKey); inMemory {
			s.every = verifyEvery
		}
	case *rsa.PublicKey:
		rsaNull = true
		switch n := pub.N.BitLen(); {
		case n >= 4096:
			s.hash, s.sigAlg, oid = crypto.SHA512, x509.SHA512WithRSA, oidRSASHA512
		case n >= 3072:
			s.hash, s.sigAlg, oid = crypto.SHA384, x509.SHA384WithRSA, oidRSASHA384
		case n >= 2048:
			s.hash, s.sigAlg, oid = crypto.SHA256, x509.SHA256WithRSA, oidRSASHA256
		default:
			return nil, fmt.Errorf("ca: RSA signing key of %d bits is too small", n)
		}
	default:
		return nil, fmt.Errorf("ca: unsupported signing key %T", pub)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if rsaNull {
			b.AddASN1NULL()
		}
	})
	s.algID = b.BytesOrPanic()
	s.ku = map[bool]encodedExt{false: keyUsageExt(x509.KeyUsageDigitalSignature), true: keyUsageExt(x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment)}
	s.ekuBC = []encodedExt{ext(oidEKU, false, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidServerAuth)
			b.AddASN1ObjectIdentifier(oidClientAuth)
		})
	}), ext(oidBC, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
	})}
	if len(m.Cert.SubjectKeyId) > 0 {
		s.akiID = m.Cert.SubjectKeyId
		s.aki = []encodedExt{ext(oidAKI, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(m.Cert.SubjectKeyId) })
			})
		})}
	}
	return s, nil
}

// keyUsageExt is the KeyUsage extension (critical) as crypto/x509 encodes
// it: a BIT STRING of the usages, trailing zero bits trimmed.
func keyUsageExt(ku x509.KeyUsage) encodedExt {
	var a [2]byte
	a[0] = reverseBits(byte(ku))
	a[1] = reverseBits(byte(ku >> 8))
	l := 1
	if a[1] != 0 {
		l = 2
	}
	bits := a[:l]
	unused := 0
	last := bits[len(bits)-1]
	for last&1 == 0 && unused < 8 {
		last >>= 1
		unused++
	}
	return ext(oidKeyUsage, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(uint8(unused))
			b.AddBytes(bits)
		})
	})
}

func reverseBits(in byte) byte {
	var out byte
	for i := 0; i < 8; i++ {
		out <<= 1
		out |= in & 1
		in >>= 1
	}
	return out
}

// encodedExt is one Extension, encoded for the TBSCertificate and as
// crypto/x509 parses it (for Certificate.Extensions): both made once.
type encodedExt struct {
	der []byte
	ext pkix.Extension
}

// ext encodes one Extension: its OID, critical when true, and its value
// (an OCTET STRING holding what value writes).
func ext(oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) encodedExt {
	var v cryptobyte.Builder
	value(&v)
	val := v.BytesOrPanic()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1OctetString(val)
	})
	return encodedExt{der: b.BytesOrPanic(), ext: pkix.Extension{Id: oid, Critical: critical, Value: val}}
}

// leafSANs are a leaf's names, split as cfssl splits host strings.
type leafSANs struct {
	dns    []string
	emails []string
	ips    []net.IP
	uris   []*url.URL
}

func splitHosts(hosts []string) leafSANs {
	var s leafSANs
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4 // as a parsed certificate holds it
			}
			s.ips = append(s.ips, ip)
		} else if e, err := parseEmail(h); err == nil && e != nil {
			s.emails = append(s.emails, e.Address)
		} else if u, err := url.ParseRequestURI(h); err == nil && u != nil {
			s.uris = append(s.uris, u)
		} else {
			s.dns = append(s.dns, h)
		}
	}
	return s
}

// parseEmail is mail.ParseAddress for strings that can be addresses (an
// address has an @); the SPIFFE ID, every leaf's first SAN, skips it.
func parseEmail(h string) (*mail.Address, error) {
	if !strings.Contains(h, "@") {
		return nil, errNotEmail
	}
	return mail.ParseAddress(h)
}

var errNotEmail = errors.New("no @")

// sign issues the leaf for csr's key (its signature already checked).
func (s *leafSigner) sign(serial *big.Int, notBefore, notAfter time.Time, csr *x509.CertificateRequest, rsaKey bool, sans leafSANs) (*x509.Certificate, error) {
	notBefore, notAfter = notBefore.UTC().Truncate(time.Second), notAfter.UTC().Truncate(time.Second)
	spki := csr.RawSubjectPublicKeyInfo
	// The subject key identifier is the SHA-1 of the public key's bits,
	// as cfssl computes it.
	var pubBits asn1.BitString
	input := cryptobyte.String(spki)
	var spkiBody cryptobyte.String
	if !input.ReadASN1(&spkiBody, cbasn1.SEQUENCE) || !spkiBody.SkipASN1(cbasn1.SEQUENCE) || !readBitString(&spkiBody, &pubBits) {
		return nil, fmt.Errorf("ca: %w: malformed public key", ErrInvalidCSR)
	}
	ski := sha1.Sum(pubBits.Bytes)
	// In crypto/x509's order.
	exts := make([]encodedExt, 0, 6)
	exts = append(exts, s.ku[rsaKey])
	exts = append(exts, s.ekuBC...)
	exts = append(exts, ext(oidSKI, false, func(b *cryptobyte.Builder) { b.AddASN1OctetString(ski[:]) }))
	exts = append(exts, s.aki...)
	exts = append(exts, marshalSANs(sans)...)
	// One buffer, sized for the whole TBSCertificate, so that encoding
	// does not grow it.
	size := 64 + len(s.algID) + len(s.issuer.RawSubject) + len(spki)
	for _, e := range exts {
		size += len(e.der)
	}
	tb := cryptobyte.NewBuilder(make([]byte, 0, size))
	tb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) })
		b.AddASN1BigInt(serial)
		b.AddBytes(s.algID)
		b.AddBytes(s.issuer.RawSubject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, notBefore)
			addTime(b, notAfter)
		})
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // empty subject
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, e := range exts {
					b.AddBytes(e.der)
				}
			})
		})
	})
	tbs, err := tb.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	h := s.hash.New()
	h.Write(tbs)
	sig, err := s.key.Sign(rand.Reader, h.Sum(nil), s.hash)
	if err != nil {
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	cb := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(s.algID)+len(sig)+16))
	cb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(s.algID)
		b.AddASN1BitString(sig)
	})
	der, err := cb.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	if n := s.count.Add(1); s.every <= 1 || n%s.every == 1 {
		if err := s.issuer.CheckSignature(s.sigAlg, tbs, sig); err != nil {
			return nil, fmt.Errorf("ca: the signing key made a signature that does not verify (faulty signer?): %w", err)
		}
	}
	c := &x509.Certificate{
		Raw:                     der,
		RawTBSCertificate:       tbs,
		RawSubjectPublicKeyInfo: spki,
		RawSubject:              emptyName,
		RawIssuer:               s.issuer.RawSubject,
		Signature:               sig,
		SignatureAlgorithm:      s.sigAlg,
		PublicKeyAlgorithm:      csr.PublicKeyAlgorithm,
		PublicKey:               csr.PublicKey,
		Version:                 3,
		SerialNumber:            serial,
		Issuer:                  s.issuer.Subject,
		NotBefore:               notBefore,
		NotAfter:                notAfter,
		KeyUsage:                x509.KeyUsageDigitalSignature,
		ExtKeyUsage:             []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid:   true,
		MaxPathLen:              -1,
		SubjectKeyId:            ski[:],
		AuthorityKeyId:          s.akiID,
		DNSNames:                sans.dns,
		EmailAddresses:          sans.emails,
		IPAddresses:             sans.ips,
		URIs:                    sans.uris,
	}
	if rsaKey {
		c.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	c.Extensions = make([]pkix.Extension, len(exts))
	for i, e := range exts {
		c.Extensions[i] = e.ext
	}
	c.Subject = pkix.Name{}
	return c, nil
}

var emptyName = []byte{0x30, 0x00}

func readBitString(s *cryptobyte.String, out *asn1.BitString) bool {
	var bytes cryptobyte.String
	if !s.ReadASN1(&bytes, cbasn1.BIT_STRING) || len(bytes) == 0 {
		return false
	}
	padding := int(bytes[0])
	bytes = bytes[1:]
	if padding > 7 || len(bytes) == 0 && padding != 0 {
		return false
	}
	out.Bytes, out.BitLength = bytes, len(bytes)*8-padding
	return true
}

// addTime writes t as crypto/x509 does: UTCTime from 1950 to 2049,
// GeneralizedTime otherwise.
func addTime(b *cryptobyte.Builder, t time.Time) {
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
	} else {
		b.AddASN1GeneralizedTime(t)
	}
}

// marshalSANs is the SubjectAltName extension, critical (the subject is
// empty), in crypto/x509's order: DNS names, emails, IPs, URIs; none when
// there is no name.
func marshalSANs(s leafSANs) []encodedExt {
	if len(s.dns)+len(s.emails)+len(s.ips)+len(s.uris) == 0 {
		return nil
	}
	return []encodedExt{ext(oidSAN, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, d := range s.dns {
				b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(d)) })
			}
			for _, e := range s.emails {
				b.AddASN1(cbasn1.Tag(1).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(e)) })
			}
			for _, ip := range s.ips {
				if v4 := ip.To4(); v4 != nil {
					ip = v4
				}
				b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
			}
			for _, u := range s.uris {
				b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(u.String())) })
			}
		})
	})}
}
