package app

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

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
	return f.target().Handle(ctx, r)
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
