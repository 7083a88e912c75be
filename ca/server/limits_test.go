package server_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/ca/server"
)

// hostileStream opens a TLS connection and starts a CreateCertificate
// call whose headers carry an authorization value of size bytes, sent in
// CONTINUATION frames and never ended: what took an unlimited server to
// gigabytes. It returns once the server resets the stream or closes the
// connection, reporting which, or "stalled" when neither happened.
func hostileStream(t *testing.T, f *fixture, size int) string {
	t.Helper()
	conn, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.roots, ServerName: "localhost", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, h := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "localhost"},
		{":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"}, {"content-type", "application/grpc"}, {"te", "trailers"},
		{"authorization", "Bearer " + strings.Repeat("a", size)}} {
		enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	b := block.Bytes()
	result := make(chan string, 1)
	go func() {
		for {
			fr2, err := fr.ReadFrame()
			if err != nil {
				result <- "closed"
				return
			}
			switch x := fr2.(type) {
			case *http2.RSTStreamFrame:
				result <- "reset"
				return
			case *http2.GoAwayFrame:
				result <- "goaway"
				return
			case *http2.SettingsFrame:
				if !x.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			}
		}
	}()
	const chunk = 16 << 10
	first := min(chunk, len(b))
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:first]}); err != nil {
		return "closed"
	}
	for off := first; off < len(b); off += chunk {
		select {
		case r := <-result:
			return r
		default:
		}
		end := min(off+chunk, len(b))
		// Never END_HEADERS: the headers never finish.
		if err := fr.WriteContinuation(1, false, b[off:end]); err != nil {
			break
		}
	}
	select {
	case r := <-result:
		return r
	case <-time.After(10 * time.Second):
		return "stalled"
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestOversizedHeadersAreRefused: 40 callers each send a 2 MiB
// authorization header and never finish, beside 200 idle connections and
// 20 sending garbage; every hostile stream is refused by the server (it
// reads no more than MaxHeaderListBytes of a header list), honest callers
// keep getting certificates meanwhile, and the server's heap stays
// bounded.
func TestOversizedHeadersAreRefused(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, nil)
	tok := f.token(t, saX)
	honest := func() {
		t.Helper()
		if _, err := c.CreateCertificate(ctx(t), catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), 0, tok); err != nil {
			t.Errorf("an honest caller failed: %v", err)
		}
	}
	honest()
	before := heapInUse()
	// Beside them: idle TCP connections that never start TLS, and TLS
	// connections that send garbage instead of HTTP/2.
	var idle []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 20; i++ {
		g, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.roots, ServerName: "localhost", NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 64<<10)
		rand.Read(junk)
		g.Write(junk)
		defer g.Close()
	}
	var wg sync.WaitGroup
	results := make(chan string, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); results <- hostileStream(t, f, 2<<20) }()
	}
	honest()
	wg.Wait()
	close(results)
	counts := map[string]int{}
	for r := range results {
		counts[r]++
	}
	if counts["stalled"] > 0 {
		t.Fatalf("hostile streams not refused: %v", counts)
	}
	honest()
	after := heapInUse()
	t.Logf("hostile streams: %v; heap in use %d KiB before, %d KiB after (%d bytes of headers sent)", counts, before>>10, after>>10, 40*(2<<20))
	if after > before+16<<20 {
		t.Errorf("the heap grew by %d MiB and stayed", (after-before)>>20)
	}
	if server.MaxHeaderListBytes > 1<<20 {
		t.Errorf("header list limit %d", server.MaxHeaderListBytes)
	}
}
