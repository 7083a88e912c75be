package kubetest

import (
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Link is a TCP proxy between a warden replica and the API server that a
// test can cut and restore, as a network partition or an API-server
// outage would: Kubeconfig points at it.
type Link struct {
	Kubeconfig string
	addr       string // the proxy's
	target     string // the API server's

	mu         sync.Mutex
	lis        net.Listener
	conns      map[net.Conn]bool
	blackholed bool
}

// Link starts a proxy to the API server and writes a kubeconfig that goes
// through it; it is closed at the end of the test.
func (s *Server) Link(t testing.TB) *Link {
	t.Helper()
	u, err := url.Parse(s.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{target: u.Host, conns: map[net.Conn]bool{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.addr = lis.Addr().String()
	l.serve(lis)
	kc, err := os.ReadFile(s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// The API server's certificate names 127.0.0.1, which the proxy's
	// address is too.
	if !strings.Contains(string(kc), u.Host) {
		t.Fatalf("the kubeconfig does not name %s", u.Host)
	}
	l.Kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(l.Kubeconfig, []byte(strings.ReplaceAll(string(kc), u.Host, l.addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Cut)
	return l
}

func (l *Link) serve(lis net.Listener) {
	l.mu.Lock()
	l.lis = lis
	l.mu.Unlock()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			switch {
			case l.lis != lis: // cut meanwhile
				l.mu.Unlock()
				c.Close()
				return
			case l.blackholed: // taken, never answered
				l.conns[c] = true
				l.mu.Unlock()
				go func() { _, _ = io.Copy(io.Discard, c) }()
				continue
			}
			l.mu.Unlock()
			up, err := net.Dial("tcp", l.target)
			if err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			l.conns[c], l.conns[up] = true, true
			l.mu.Unlock()
			go func() {
				_, _ = io.Copy(up, c)
				if !l.isBlackholed() {
					up.Close()
				}
			}()
			go func() {
				_, _ = io.Copy(c, up)
				if l.isBlackholed() {
					// The client's connection stays open and silent.
					_, _ = io.Copy(io.Discard, c)
					return
				}
				c.Close()
			}()
		}
	}()
}

func (l *Link) isBlackholed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blackholed
}

// Blackhole drops everything from now on without closing anything, as a
// partition that loses packets does: requests hang until their clients
// give up, new connections are taken and never answered.
func (l *Link) Blackhole() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.blackholed = true
	for c := range l.conns {
		if c.RemoteAddr().String() == l.target { // the API server's side
			c.Close()
			delete(l.conns, c)
		}
	}
}

// Cut stops the proxy: open connections are closed, new ones refused.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lis != nil {
		l.lis.Close()
		l.lis = nil
	}
	for c := range l.conns {
		c.Close()
	}
	l.conns = map[net.Conn]bool{}
}

// Restore ends a cut or a blackhole: the proxy forwards again on the
// same address (connections held by a blackhole are closed).
func (l *Link) Restore(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	wasBlackholed := l.blackholed
	l.blackholed = false
	l.mu.Unlock()
	if wasBlackholed {
		l.Cut()
	}
	lis, err := net.Listen("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	l.serve(lis)
}
