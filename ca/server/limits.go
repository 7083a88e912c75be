package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// MaxHeaderListBytes bounds a request's headers: a service-account token
// is a few KiB.
const MaxHeaderListBytes = 64 << 10

// LimitConfig bounds what one peer — a source IP address — can make a
// warden gRPC server hold before and after it has proved anything. Zero
// in a per-peer field means no limit of that kind.
type LimitConfig struct {
	StreamsPerConn int // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, for every connection
	StreamsPerPeer int // open streams across all of one peer's connections
	ConnsPerPeer   int // open connections from one peer (Limiter.Listen)
	// ConnRatePerPeer is how many new connections a second one peer may
	// open, in bursts of two seconds' worth: every connection costs the
	// server a TLS handshake before the peer has proved anything.
	ConnRatePerPeer float64
	Log             *slog.Logger
}

// DefaultLimits are the limits warden serves with unless told otherwise.
// A sidecar or node agent holds one or two connections and a handful of
// streams; the bounds leave room for a node's worth of proxies behind one
// address.
func DefaultLimits() LimitConfig {
	return LimitConfig{StreamsPerConn: 1024, StreamsPerPeer: 2048, ConnsPerPeer: 256, ConnRatePerPeer: 50}
}

// Limiter applies a LimitConfig to one gRPC server and its listeners, and
// counts what it refused.
type Limiter struct {
	cfg            LimitConfig
	mu             sync.Mutex
	conns, streams map[string]int
	buckets        map[string]*bucket // new-connection allowance per peer
	refusedConns   atomic.Int64
	refusedStreams atomic.Int64
	noCredentials  atomic.Int64
	lastLog        atomic.Int64 // unix nanos of the last refusal logged
}

// NewLimiter returns a limiter for cfg.
func NewLimiter(cfg LimitConfig) *Limiter {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Limiter{cfg: cfg, conns: map[string]int{}, streams: map[string]int{}, buckets: map[string]*bucket{}}
}

// Refused reports how many connections and streams the per-peer limits
// refused, and how many certificate requests came without credentials.
func (l *Limiter) Refused() (conns, streams, noCredentials int64) {
	return l.refusedConns.Load(), l.refusedStreams.Load(), l.noCredentials.Load()
}

// Open reports what a peer (an IP address) holds now: connections and
// streams.
func (l *Limiter) Open(peer string) (conns, streams int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[peer], l.streams[peer]
}

// ServerOptions bound what a client can make the server hold: header
// lists (where tokens travel) are small, a handshake must finish within
// 10 s, idle connections are closed, pings are rate-limited, a message is
// at most 4 MiB, streams are limited per connection and per peer, and a
// certificate request without credentials is refused before its body is
// read. Every gRPC server warden runs (CA port with CA, SDS and ADS; the
// agent's Unix sockets) uses them.
func (l *Limiter) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxHeaderListSize(MaxHeaderListBytes),
		grpc.ConnectionTimeout(10 * time.Second),
		grpc.MaxRecvMsgSize(4 << 20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute, Time: 2 * time.Hour, Timeout: 20 * time.Second}),
		grpc.InTapHandle(l.tap),
	}
	if l.cfg.StreamsPerConn > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(l.cfg.StreamsPerConn)))
	}
	return opts
}

// createCertificate is the one unary method whose request body gRPC reads
// in full before warden's handler runs.
const createCertificate = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

// tap runs in the connection's reader for every new stream, before any of
// its body is read. It must be cheap: it only looks at headers and counts.
func (l *Limiter) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName == createCertificate && !hasCredentials(ctx, info.Header) {
		l.noCredentials.Add(1)
		return ctx, status.Error(codes.Unauthenticated, "authentication failed: no credentials: send authorization: Bearer <token> or a client certificate")
	}
	key := peerKey(ctx)
	if key == "" || l.cfg.StreamsPerPeer <= 0 {
		return ctx, nil
	}
	l.mu.Lock()
	if l.streams[key] >= l.cfg.StreamsPerPeer {
		l.mu.Unlock()
		l.refusedStreams.Add(1)
		l.logRefusal("stream", key, l.cfg.StreamsPerPeer, "--max-streams-per-peer")
		return ctx, status.Errorf(codes.ResourceExhausted, "too many open streams from %s (limit %d per peer)", key, l.cfg.StreamsPerPeer)
	}
	l.streams[key]++
	l.mu.Unlock()
	// The stream's context ends with the stream.
	context.AfterFunc(ctx, func() {
		l.mu.Lock()
		if l.streams[key]--; l.streams[key] <= 0 {
			delete(l.streams, key)
		}
		l.mu.Unlock()
	})
	return ctx, nil
}

// hasCredentials: an authorization header, or a TLS client certificate.
func hasCredentials(ctx context.Context, md metadata.MD) bool {
	if len(md.Get("authorization")) > 0 {
		return true
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.PeerCertificates) > 0
}

// peerKey is a TCP peer's IP address; "" for other transports (a Unix
// socket's peers are local processes, checked by the socket's mode).
func peerKey(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	return addrKey(p.Addr)
}

func addrKey(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return ""
}

// logRefusal logs at most one refusal every 10 s: a flood must not turn
// into a flood of log lines.
func (l *Limiter) logRefusal(what, peer string, limit int, flag string) {
	now := time.Now().UnixNano()
	last := l.lastLog.Load()
	if now-last < int64(10*time.Second) || !l.lastLog.CompareAndSwap(last, now) {
		return
	}
	conns, streams, _ := l.Refused()
	l.cfg.Log.Warn(fmt.Sprintf("refusing a %s from a peer at its limit of %d (raise it with %s)", what, limit, flag),
		"peer", peer, "refusedConns", conns, "refusedStreams", streams)
}

// Listen wraps a TCP listener so that a peer holding ConnsPerPeer
// connections has further ones closed at once, before any TLS work.
func (l *Limiter) Listen(inner net.Listener) net.Listener {
	if l.cfg.ConnsPerPeer <= 0 && l.cfg.ConnRatePerPeer <= 0 {
		return inner
	}
	return &limitListener{Listener: inner, l: l}
}

type limitListener struct {
	net.Listener
	l *Limiter
}

func (ll *limitListener) Accept() (net.Conn, error) {
	l := ll.l
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := addrKey(c.RemoteAddr())
		if key == "" {
			return c, nil
		}
		l.mu.Lock()
		if l.cfg.ConnsPerPeer > 0 && l.conns[key] >= l.cfg.ConnsPerPeer {
			l.mu.Unlock()
			l.refusedConns.Add(1)
			l.logRefusal("connection", key, l.cfg.ConnsPerPeer, "--max-conns-per-peer")
			c.Close()
			continue
		}
		if !l.allowConn(key, time.Now()) {
			l.mu.Unlock()
			l.refusedConns.Add(1)
			l.logRefusal("new connection", key, int(l.cfg.ConnRatePerPeer), "--max-conn-rate-per-peer")
			c.Close()
			continue
		}
		l.conns[key]++
		l.mu.Unlock()
		return &countedConn{Conn: c, release: func() {
			l.mu.Lock()
			if l.conns[key]--; l.conns[key] <= 0 {
				delete(l.conns, key)
			}
			l.mu.Unlock()
		}}, nil
	}
}

// bucket is a token bucket: tokens accrue at ConnRatePerPeer a second up
// to two seconds' worth, and each new connection takes one.
type bucket struct {
	tokens float64
	at     time.Time
}

// allowConn takes a token from key's bucket; l.mu is held.
func (l *Limiter) allowConn(key string, now time.Time) bool {
	rate := l.cfg.ConnRatePerPeer
	if rate <= 0 {
		return true
	}
	burst := max(2*rate, 1)
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			// Forget full buckets: a peer unseen long enough to refill
			// loses nothing by it.
			for k, ob := range l.buckets {
				if ob.tokens+now.Sub(ob.at).Seconds()*rate >= burst {
					delete(l.buckets, k)
				}
			}
		}
		b = &bucket{tokens: burst, at: now}
		l.buckets[key] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// maxBuckets bounds the per-peer rate state before full buckets are
// dropped.
const maxBuckets = 4096

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
