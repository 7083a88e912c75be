package kube

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/client-go/util/workqueue"
)

// loop reconciles string keys from a rate-limited work queue: failures are
// retried with backoff, and a reconcile can ask to run again later.
type loop struct {
	name      string
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
	reconcile func(ctx context.Context, key string) (after time.Duration, err error)
}

func newLoop(name string, log *slog.Logger, rec func(context.Context, string) (time.Duration, error)) *loop {
	return &loop{
		name:      name,
		log:       log,
		reconcile: rec,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
	}
}

func (l *loop) add(key string) { l.queue.Add(key) }

// run processes keys until ctx is done.
func (l *loop) run(ctx context.Context, workers int) {
	go func() { <-ctx.Done(); l.queue.ShutDown() }()
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for l.next(ctx) {
			}
		}()
	}
	for range workers {
		<-done
	}
}

func (l *loop) next(ctx context.Context) bool {
	key, quit := l.queue.Get()
	if quit {
		return false
	}
	defer l.queue.Done(key)
	after, err := l.reconcile(ctx, key)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("reconcile failed; retrying", "controller", l.name, "key", key, "error", err.Error())
		}
		l.queue.AddRateLimited(key)
		return true
	}
	l.queue.Forget(key)
	if after > 0 {
		l.queue.AddAfter(key, after)
	}
	return true
}
