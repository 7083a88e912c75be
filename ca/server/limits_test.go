package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/bench"
)

// liveHeap is the heap's live bytes, just after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// honestCaller asks for a certificate from 127.0.0.1 and fails the test
// if it is refused.
func honestCaller(t *testing.T, f *fixture) func() {
	c := f.client(t, nil)
	tok := f.token(t, saX)
	csr := catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil)
	return func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := c.CreateCertificate(ctx, csr, 0, tok); err != nil {
			t.Errorf("an honest caller failed: %v", err)
		}
	}
}

func (f *fixture) hostile(cfg bench.HostileConfig, sources ...string) bench.HostileConfig {
	cfg.Addr, cfg.Roots, cfg.ServerName = f.addr, f.roots, "localhost"
	for _, s := range sources {
		cfg.Sources = append(cfg.Sources, net.ParseIP(s))
	}
	return cfg
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestOversizedHeadersAreRefused: 40 callers send 2 MiB authorization
// headers that never end, again and again, beside 200 idle connections,
// 50 that never start TLS and 10 callers sending garbage. Every oversized
// header is refused (the server reads no more than MaxHeaderListBytes of
// a header list, then drops the connection), honest callers keep getting
// certificates, and the heap comes back once the hostile clients leave.
func TestOversizedHeadersAreRefused(t *testing.T) {
	f := newFixture(t)
	honest := honestCaller(t, f)
	honest()
	before := liveHeap()
	h := bench.StartHostile(context.Background(), f.hostile(bench.HostileConfig{
		Oversized: 40, HeaderBytes: 2 << 20, Idle: 200, HalfOpen: 50, Garbage: 10,
	}, "127.0.0.2", "127.0.0.3"))
	eventually(t, "the idle connections", func() bool { return h.Report().IdleOpen == 200 })
	during := liveHeap()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		honest()
	}
	r := h.Stop()
	t.Logf("hostile: %s", r)
	if r.OversizedSent == 0 || r.OversizedRefused < r.OversizedSent-40 {
		t.Errorf("oversized headers not refused: %d sent, %d refused (at most the 40 in flight at the stop may be neither)", r.OversizedSent, r.OversizedRefused)
	}
	honest()
	// The server notices the closed connections as it reads them; give
	// it a few seconds, then the heap must be back near where it was.
	var after uint64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if after = liveHeap(); after <= before+8<<20 {
			break
		}
	}
	t.Logf("live heap: %d KiB before, %d KiB beside the hostile clients, %d KiB after", before>>10, during>>10, after>>10)
	if after > before+8<<20 {
		t.Errorf("the heap grew by %d MiB and stayed", (after-before)>>20)
	}
	if server.MaxHeaderListBytes > 1<<20 {
		t.Errorf("header list limit %d", server.MaxHeaderListBytes)
	}
}

// TestPerPeerLimits: a peer (127.0.0.2) holding its streams, and another
// (127.0.0.3) its connections, are refused more, while a third
// (127.0.0.1) is served; when they leave, their allowance comes back.
func TestPerPeerLimits(t *testing.T) {
	f := newFixture(t, withLimits(server.LimitConfig{StreamsPerConn: 100, StreamsPerPeer: 5, ConnsPerPeer: 3}))
	honest := honestCaller(t, f)
	streams := bench.StartHostile(context.Background(), f.hostile(bench.HostileConfig{Stalled: 8}, "127.0.0.2"))
	eventually(t, "5 stalled streams held and 3 refused", func() bool {
		r := streams.Report()
		return r.StalledOpen == 5 && r.StalledRefused == 3
	})
	conns := bench.StartHostile(context.Background(), f.hostile(bench.HostileConfig{Idle: 6}, "127.0.0.3"))
	eventually(t, "3 idle connections held and more refused", func() bool {
		r := conns.Report()
		return r.IdleOpen == 3 && r.ConnsRefused >= 3
	})
	honest()
	refusedConns, refusedStreams, _ := f.limiter.Refused()
	if refusedConns < 3 || refusedStreams != 3 {
		t.Errorf("the limiter counted %d refused connections and %d refused streams", refusedConns, refusedStreams)
	}
	streams.Stop()
	conns.Stop()
	// The server releases a peer's allowance as it notices the closes.
	eventually(t, "the peers' connections and streams released", func() bool {
		c2, s2 := f.limiter.Open("127.0.0.2")
		c3, s3 := f.limiter.Open("127.0.0.3")
		return c2+s2+c3+s3 == 0
	})
	again := bench.StartHostile(context.Background(), f.hostile(bench.HostileConfig{Stalled: 5, Idle: 2}, "127.0.0.2"))
	defer again.Stop()
	eventually(t, "the peer's allowance back", func() bool {
		r := again.Report()
		return r.StalledOpen == 5 && r.IdleOpen == 2
	})
	if r := again.Report(); r.StalledRefused != 0 {
		t.Errorf("streams refused after the peer's earlier ones ended: %s", r)
	}
}

// TestConnRatePerPeer: a peer opening connections faster than its rate
// has the excess closed before the TLS handshake; another peer is not
// affected.
func TestConnRatePerPeer(t *testing.T) {
	// One a second, in bursts of two: however slow the machine, 30
	// handshakes in a row are mostly refused.
	f := newFixture(t, withLimits(server.LimitConfig{StreamsPerConn: 100, ConnRatePerPeer: 1}))
	honest := honestCaller(t, f)
	ok, refused := 0, 0
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}
	for range 30 {
		c, err := d.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{RootCAs: f.roots, ServerName: "localhost"})
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() == nil {
			ok++
		} else {
			refused++
		}
		tc.Close()
	}
	honest()
	if ok < 2 || refused < 15 {
		t.Errorf("30 quick connections: %d handshakes, %d refused; want the burst of 2 served and most of the rest refused", ok, refused)
	}
}

// TestRequestWithoutCredentialsIsRefusedBeforeItsBody: a certificate
// request with neither a token nor a client certificate is answered
// Unauthenticated as soon as its headers arrive, although its body never
// comes: the server does not read (or wait for) a message from a caller
// that cannot be served.
func TestRequestWithoutCredentialsIsRefusedBeforeItsBody(t *testing.T) {
	f := newFixture(t)
	conn, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.roots, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, h := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "localhost"},
		{":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	for {
		fr2, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no answer to a request without credentials: %v", err)
		}
		mh, ok := fr2.(*http2.MetaHeadersFrame)
		if !ok || mh.StreamID != 1 {
			continue
		}
		if got := mh.PseudoValue("status"); got != "200" {
			t.Fatalf(":status %q", got)
		}
		var code string
		for _, hf := range mh.RegularFields() {
			if hf.Name == "grpc-status" {
				code = hf.Value
			}
		}
		if code != "16" { // codes.Unauthenticated
			t.Fatalf("grpc-status %q, want %d", code, codes.Unauthenticated)
		}
		return
	}
}

// TestTokenlessRequestsAreCountedNotServed: the same refusal through
// a gRPC client.
func TestTokenlessRequestsAreCountedNotServed(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, nil)
	_, err := c.Request(ctx(t), client.Request{})
	wantStatus(t, err, codes.Unauthenticated, "no credentials")
	if _, _, n := f.limiter.Refused(); n != 1 {
		t.Errorf("requests without credentials counted: %d, want 1", n)
	}
}
