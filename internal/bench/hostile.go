package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HostileConfig describes clients that try to make a gRPC server hold
// memory without proving anything. They connect from Sources (several
// addresses, as an attacker with several machines would; on loopback,
// 127.0.0.2 and up), so that the server's per-peer limits do not count
// them against the honest callers.
type HostileConfig struct {
	Addr       string
	Roots      *x509.CertPool
	ServerName string
	Sources    []net.IP // local addresses to dial from, round-robin; none: the system's choice

	Oversized   int // callers sending a HeaderBytes authorization header that never ends, again and again
	HeaderBytes int // default 8 MiB
	Stalled     int // streams whose headers finish but whose body never comes, held open
	Idle        int // TLS + HTTP/2 connections that open no stream
	HalfOpen    int // TCP connections that never start TLS
	Garbage     int // callers sending random bytes after the TLS handshake, again and again
}

// HostileReport counts what the server did to the hostile clients.
type HostileReport struct {
	OversizedSent, OversizedRefused int // oversized header attempts; refused (reset, GOAWAY or closed)
	StalledOpen, StalledRefused     int // stalled streams the server held at the end; refused at open
	IdleOpen, HalfOpenOpen          int // idle and half-open connections the server held at the end
	ConnsRefused                    int // connections the server closed before a handshake finished
	GarbageSent                     int
	HeaderBytesSent                 int64
}

func (r HostileReport) String() string {
	return fmt.Sprintf("oversized headers: %d sent (%d MiB), %d refused; stalled streams: %d held, %d refused; idle connections: %d held; half-open: %d held; garbage: %d sent; connections refused: %d",
		r.OversizedSent, r.HeaderBytesSent>>20, r.OversizedRefused, r.StalledOpen, r.StalledRefused, r.IdleOpen, r.HalfOpenOpen, r.GarbageSent, r.ConnsRefused)
}

// Hostile is a running set of hostile clients.
type Hostile struct {
	cfg    HostileConfig
	cancel context.CancelFunc
	wg     sync.WaitGroup
	next   atomic.Uint64

	oversizedSent, oversizedRefused atomic.Int64
	stalledOpen, stalledRefused     atomic.Int64
	idleOpen, halfOpen              atomic.Int64
	connsRefused, garbageSent       atomic.Int64
	headerBytes                     atomic.Int64
}

// StartHostile starts the hostile clients; Stop ends them.
func StartHostile(ctx context.Context, cfg HostileConfig) *Hostile {
	if cfg.HeaderBytes <= 0 {
		cfg.HeaderBytes = 8 << 20
	}
	ctx, cancel := context.WithCancel(ctx)
	h := &Hostile{cfg: cfg, cancel: cancel}
	run := func(n int, f func(context.Context)) {
		for range n {
			h.wg.Add(1)
			go func() { defer h.wg.Done(); f(ctx) }()
		}
	}
	run(cfg.Oversized, h.oversized)
	run(cfg.Idle, h.idle)
	run(cfg.HalfOpen, h.halfOpenConn)
	run(cfg.Garbage, h.garbage)
	// Stalled streams share connections, 100 to a connection.
	for left := cfg.Stalled; left > 0; left -= 100 {
		n := min(left, 100)
		run(1, func(ctx context.Context) { h.stalled(ctx, n) })
	}
	return h
}

// Report is what the hostile clients saw so far.
func (h *Hostile) Report() HostileReport {
	return HostileReport{
		OversizedSent: int(h.oversizedSent.Load()), OversizedRefused: int(h.oversizedRefused.Load()),
		StalledOpen: int(h.stalledOpen.Load()), StalledRefused: int(h.stalledRefused.Load()),
		IdleOpen: int(h.idleOpen.Load()), HalfOpenOpen: int(h.halfOpen.Load()),
		ConnsRefused: int(h.connsRefused.Load()), GarbageSent: int(h.garbageSent.Load()),
		HeaderBytesSent: h.headerBytes.Load(),
	}
}

// Stop closes every hostile connection and returns the final report
// (taken before the connections close).
func (h *Hostile) Stop() HostileReport {
	r := h.Report()
	h.cancel()
	h.wg.Wait()
	return r
}

func (h *Hostile) dialTCP(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if n := len(h.cfg.Sources); n > 0 {
		d.LocalAddr = &net.TCPAddr{IP: h.cfg.Sources[h.next.Add(1)%uint64(n)]}
	}
	return d.DialContext(ctx, "tcp", h.cfg.Addr)
}

func (h *Hostile) dialTLS(ctx context.Context) (*tls.Conn, error) {
	c, err := h.dialTCP(ctx)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{RootCAs: h.cfg.Roots, ServerName: h.cfg.ServerName, NextProtos: []string{"h2"}})
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		h.connsRefused.Add(1)
		return nil, err
	}
	return tc, nil
}

// h2Conn is a raw HTTP/2 client connection: it writes frames by hand and
// reports what the server does to each stream.
type h2Conn struct {
	conn   net.Conn
	fr     *http2.Framer
	wmu    sync.Mutex
	ended  chan uint32 // stream IDs the server reset (0: the connection ended)
	closed chan struct{}
}

func (h *Hostile) dialH2(ctx context.Context) (*h2Conn, error) {
	c, err := h.dialTLS(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		c.Close()
		return nil, err
	}
	hc := &h2Conn{conn: c, fr: http2.NewFramer(c, c), ended: make(chan uint32, 1024), closed: make(chan struct{})}
	hc.fr.MaxHeaderListSize = 1 << 20
	if err := hc.fr.WriteSettings(); err != nil {
		c.Close()
		return nil, err
	}
	go hc.read()
	return hc, nil
}

func (hc *h2Conn) read() {
	defer close(hc.closed)
	for {
		f, err := hc.fr.ReadFrame()
		if err != nil {
			return
		}
		switch x := f.(type) {
		case *http2.RSTStreamFrame:
			hc.ended <- x.StreamID
		case *http2.HeadersFrame:
			// A trailers-only answer (an early refusal) ends the stream.
			if x.StreamEnded() {
				hc.ended <- x.StreamID
			}
		case *http2.GoAwayFrame:
			return
		case *http2.SettingsFrame:
			if !x.IsAck() {
				_ = hc.write(hc.fr.WriteSettingsAck)
			}
		case *http2.PingFrame:
			if !x.IsAck() {
				_ = hc.write(func() error { return hc.fr.WritePing(true, x.Data) })
			}
		}
	}
}

// write runs one frame write under wmu: the reader answers SETTINGS and
// PING while the sender writes HEADERS, and a Framer is not safe for
// concurrent writes.
func (hc *h2Conn) write(f func() error) error {
	hc.wmu.Lock()
	defer hc.wmu.Unlock()
	return f()
}

func headerBlock(h *HostileConfig, authorization string) []byte {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", h.ServerName},
		{":path", "/istio.v1.auth.IstioCertificateService/CreateCertificate"}, {"content-type", "application/grpc"}, {"te", "trailers"},
		{"authorization", authorization}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return block.Bytes()
}

// oversized sends, over and over, a request whose authorization header is
// HeaderBytes long, in CONTINUATION frames, never finishing the header
// block; each attempt ends when the server refuses it.
func (h *Hostile) oversized(ctx context.Context) {
	block := headerBlock(&h.cfg, "Bearer "+strings.Repeat("a", h.cfg.HeaderBytes))
	for ctx.Err() == nil {
		hc, err := h.dialH2(ctx)
		if err != nil {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		h.oversizedSent.Add(1)
		const chunk = 16 << 10
		sent := min(chunk, len(block))
		err = hc.write(func() error {
			return hc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:sent]})
		})
		for off := sent; err == nil && off < len(block) && ctx.Err() == nil; off += chunk {
			select {
			case <-hc.closed:
				err = io.EOF
				continue
			case <-hc.ended:
				err = io.EOF
				continue
			default:
			}
			end := min(off+chunk, len(block))
			err = hc.write(func() error { return hc.fr.WriteContinuation(1, false, block[off:end]) })
			sent = end
		}
		h.headerBytes.Add(int64(sent))
		select {
		case <-hc.closed:
			h.oversizedRefused.Add(1)
		case <-hc.ended:
			h.oversizedRefused.Add(1)
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
		hc.conn.Close()
	}
}

// stalled opens n streams on one connection, each with complete headers
// (a bearer token that would fail, were it ever checked) and no body, and
// holds them; when the connection ends it starts again.
func (h *Hostile) stalled(ctx context.Context, n int) {
	block := headerBlock(&h.cfg, "Bearer not-a-token")
	for ctx.Err() == nil {
		hc, err := h.dialH2(ctx)
		if err != nil {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		open := int64(0)
		for i := range n {
			err := hc.write(func() error {
				return hc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndHeaders: true})
			})
			if err != nil {
				break
			}
			open++
		}
		h.stalledOpen.Add(open)
		ended := map[uint32]bool{} // a refusal may come as trailers and a reset
	wait:
		for {
			select {
			case id := <-hc.ended:
				if ended[id] {
					continue
				}
				ended[id] = true
				open--
				h.stalledOpen.Add(-1)
				h.stalledRefused.Add(1)
			case <-hc.closed:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		h.stalledOpen.Add(-open)
		hc.conn.Close()
	}
}

// idle holds a TLS + HTTP/2 connection that opens no stream.
func (h *Hostile) idle(ctx context.Context) {
	for ctx.Err() == nil {
		hc, err := h.dialH2(ctx)
		if err != nil {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		h.idleOpen.Add(1)
		select {
		case <-hc.closed:
		case <-ctx.Done():
		}
		h.idleOpen.Add(-1)
		hc.conn.Close()
	}
}

// halfOpenConn holds a TCP connection that never starts TLS.
func (h *Hostile) halfOpenConn(ctx context.Context) {
	for ctx.Err() == nil {
		c, err := h.dialTCP(ctx)
		if err != nil {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		h.halfOpen.Add(1)
		done := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, c); close(done) }()
		select {
		case <-done:
			h.connsRefused.Add(1)
		case <-ctx.Done():
		}
		h.halfOpen.Add(-1)
		c.Close()
	}
}

// garbage completes TLS, then sends random bytes instead of HTTP/2.
func (h *Hostile) garbage(ctx context.Context) {
	junk := make([]byte, 64<<10)
	for ctx.Err() == nil {
		c, err := h.dialTLS(ctx)
		if err != nil {
			sleep(ctx, 100*time.Millisecond)
			continue
		}
		_, _ = rand.Read(junk)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(junk); err == nil {
			h.garbageSent.Add(1)
		}
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}
