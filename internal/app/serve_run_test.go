package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/wardenmesh/warden/ca/server"
)

// TestTaskStoppedByShutdownIsNotAFailure: a background task that returns
// context.Canceled because serve is shutting down (an informer stopped
// before its first list) leaves serve's exit clean; a task that fails on
// its own still fails serve.
func TestTaskStoppedByShutdownIsNotAFailure(t *testing.T) {
	plane := func(task func(context.Context) error) *controlPlane {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return &controlPlane{log: slog.New(slog.DiscardHandler), grpc: grpc.NewServer(), caLis: lis,
			limiter: server.NewLimiter(server.DefaultLimits()), tasks: []func(context.Context) error{task}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	stopped := plane(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if err := stopped.run(ctx); err != nil {
		t.Fatalf("a task stopped by the shutdown: %v", err)
	}
	broken := errors.New("list secrets: forbidden")
	failing := plane(func(context.Context) error { return broken })
	if err := failing.run(context.Background()); !errors.Is(err, broken) {
		t.Fatalf("a failing task: %v", err)
	}
	wrapped := plane(func(context.Context) error { return context.Canceled })
	if err := wrapped.run(context.Background()); !errors.Is(err, context.Canceled) {
		t.Fatalf("a task canceled while serve runs on: %v", err)
	}
}
