package app

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// klog, through which client-go logs, is a process-wide setting. It is set
// once, to a handler that forwards to the logger of the serve that started
// last: setting it again for every serve raced with client-go's informers
// reading it (several serves run in one test process).
var (
	klogOnce   sync.Once
	klogTarget atomic.Pointer[slog.Handler]
)

// logClientGoTo sends client-go's logs to l.
func logClientGoTo(l *slog.Logger) {
	h := l.Handler()
	klogTarget.Store(&h)
	klogOnce.Do(func() { klog.SetSlogLogger(slog.New(forwardHandler{})) })
}

// forwardHandler hands each record to klogTarget's handler at the time of
// the call, with the attributes and groups added to it on the way.
type forwardHandler struct {
	with []func(slog.Handler) slog.Handler
}

func (f forwardHandler) target() slog.Handler {
	h := *klogTarget.Load()
	for _, w := range f.with {
		h = w(h)
	}
	return h
}

func (f forwardHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return (*klogTarget.Load()).Enabled(ctx, l)
}

func (f forwardHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		pass, dropped := clientGoRepeats.note(r.Message, r.Time)
		if !pass {
			return nil
		}
		if dropped > 0 {
			r = r.Clone()
			r.AddAttrs(slog.Int("repeatedSinceLastLogged", dropped))
		}
	}
	return f.target().Handle(ctx, r)
}

// clientGoRepeats limits client-go's repeated errors: it logs the same
// error at every retry (leader election's Lease every 2 seconds while the
// API server is unreachable), and one line a minute says as much.
var clientGoRepeats = &repeatLimit{every: time.Minute, seen: map[string]*repeat{}}

// repeatLimit passes a message at once, then the same message at most
// once every every, saying how many it dropped meanwhile.
type repeatLimit struct {
	every time.Duration
	mu    sync.Mutex
	seen  map[string]*repeat
}

type repeat struct {
	at      time.Time
	dropped int
}

// note says whether the message msg, at time at, is to be logged, and how
// many of it were dropped since it last was.
func (l *repeatLimit) note(msg string, at time.Time) (pass bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.seen[msg]; r != nil && at.Sub(r.at) < l.every {
		r.dropped++
		return false, 0
	}
	if len(l.seen) >= 256 { // formatted messages vary: forget the old ones
		for k, r := range l.seen {
			if at.Sub(r.at) >= l.every {
				delete(l.seen, k)
			}
		}
	}
	if r := l.seen[msg]; r != nil {
		dropped = r.dropped
	}
	l.seen[msg] = &repeat{at: at}
	return true, dropped
}

func (f forwardHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return f.and(func(h slog.Handler) slog.Handler { return h.WithAttrs(attrs) })
}

func (f forwardHandler) WithGroup(name string) slog.Handler {
	return f.and(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}

func (f forwardHandler) and(w func(slog.Handler) slog.Handler) forwardHandler {
	return forwardHandler{with: append(append([]func(slog.Handler) slog.Handler(nil), f.with...), w)}
}
