package kube

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"k8s.io/client-go/tools/cache"
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

// factory is what client-go's informer factories have in common.
type factory interface {
	Start(stop <-chan struct{})
	WaitForCacheSync(stop <-chan struct{}) map[reflect.Type]bool
}

// startAndSync starts the factories and waits until every informer has
// listed its objects.
func startAndSync(ctx context.Context, name string, fs ...factory) error {
	for _, f := range fs {
		f.Start(ctx.Done())
	}
	for _, f := range fs {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err() // shutting down
				}
				return fmt.Errorf("kube: %s: %v cache did not sync", name, typ)
			}
		}
	}
	return nil
}

// tombstone unwraps the final state of an object deleted while the
// informer was disconnected.
func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}
