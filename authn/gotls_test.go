package authn_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// svid issues a tls.Certificate for id from a.
func svid(t *testing.T, a *ca.Authority, id spiffeid.ID) *tls.Certificate {
	t.Helper()
	c, err := a.IssueServing(ca.ServingOptions{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serveEcho runs an echo server on a listener shaped by the workload's
// effective mode for port 8080.
func serveEcho(t *testing.T, policy string, a *ca.Authority) (string, authn.Mode) {
	t.Helper()
	objs, err := api.Decode([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := authn.NewIndex(objs, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ix.Effective(authn.Workload{Namespace: "default", Labels: map[string]string{"app": "flaskapp"}, Ports: []authn.Port{{Number: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	mode := s.Ports[0].Mode
	server := svid(t, a, catest.ID("default", "flaskapp"))
	cfg := ix.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return server, nil },
		a.Bundle().X509Authorities, time.Now)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := authn.Listen(inner, mode, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				if strings.Contains(err.Error(), "closed") {
					return
				}
				continue
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = io.WriteString(c, "echo "+line)
				}
			}()
		}
	}()
	return inner.Addr().String(), mode
}

func talk(c net.Conn) (string, error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func tlsTalk(addr string, roots *x509.CertPool, cert *tls.Certificate) (string, error) {
	// The server is identified by its SPIFFE ID, not a DNS name: verify
	// the chain here instead of the default host name check.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots})
		return err
	}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	return talk(c)
}

func TestStrictAndPermissiveOverRealTLS(t *testing.T) {
	t.Parallel()
	a := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	roots := x509.NewCertPool()
	roots.AddCert(a.Material().Roots[0])
	sleep := svid(t, a, catest.ID("default", "sleep"))
	foreignCA := catest.Authority(t, catest.Root(t, ca.CAOptions{}))
	foreign := svid(t, foreignCA, catest.ID("default", "sleep"))

	strict, mode := serveEcho(t, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n", a)
	if mode != authn.Strict {
		t.Fatalf("mode %s", mode)
	}
	if got, err := tlsTalk(strict, roots, sleep); err != nil || got != "echo hello\n" {
		t.Fatalf("STRICT with an SVID: %q %v", got, err)
	}
	if _, err := tlsTalk(strict, roots, nil); err == nil {
		t.Fatal("STRICT accepted a client without a certificate")
	}
	if _, err := tlsTalk(strict, roots, foreign); err == nil {
		t.Fatal("STRICT accepted an SVID from another CA")
	}
	if c, err := net.Dial("tcp", strict); err == nil {
		if got, err := talk(c); err == nil && got == "echo hello\n" {
			t.Fatal("STRICT answered plaintext")
		}
	}

	perm, mode := serveEcho(t, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: PERMISSIVE}}\n", a)
	if mode != authn.Permissive {
		t.Fatalf("mode %s", mode)
	}
	if got, err := tlsTalk(perm, roots, sleep); err != nil || got != "echo hello\n" {
		t.Fatalf("PERMISSIVE with an SVID: %q %v", got, err)
	}
	c, err := net.Dial("tcp", perm)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := talk(c); err != nil || got != "echo hello\n" {
		t.Fatalf("PERMISSIVE plaintext: %q %v", got, err)
	}
}
