package testkit

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/ca"
)

// ServeBundleEndpoint serves a foreign trust domain's bundle, as an
// implementation that is not warden does (go-spiffe's federation
// handler, https_spiffe): roots at sequence seq, refresh hint 1 s, over
// TLS at addr ("127.0.0.1:0" for any port) with an SVID for id issued by
// m, the trust domain's CA. It returns the address and the server, which
// the test's end closes too.
func ServeBundleEndpoint(t testing.TB, m *ca.Material, id spiffeid.ID, addr string, seq uint64, roots []*x509.Certificate) (string, *http.Server) {
	t.Helper()
	td := id.TrustDomain()
	a, err := ca.New(ca.Config{TrustDomain: td}, m)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := a.IssueServing(ca.ServingOptions{ID: id, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	b := spiffebundle.FromX509Authorities(td, roots)
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(time.Second)
	h, err := federation.NewHandler(td, b)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String(), srv
}
