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

// Loop reconciles string keys from a rate-limited work queue: failures are
// retried with backoff, and a reconcile can ask to run again later.
type Loop struct {
	name      string
	log       *slog.Logger
	queue     workqueue.TypedRateLimitingInterface[string]
	reconcile func(ctx context.Context, key string) (after time.Duration, err error)

	// Idle, when set, runs each time the queue runs empty after a key
	// (a Tally's Flush).
	Idle func()
}

// NewLoop makes a loop named name (in logs and the queue's metrics) that
// runs rec for each key.
func NewLoop(name string, log *slog.Logger, rec func(context.Context, string) (time.Duration, error)) *Loop {
	return &Loop{
		name:      name,
		log:       log,
		reconcile: rec,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
	}
}

// Add queues key.
func (l *Loop) Add(key string) { l.queue.Add(key) }

// Run processes keys with workers goroutines until ctx is done.
func (l *Loop) Run(ctx context.Context, workers int) {
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

func (l *Loop) next(ctx context.Context) bool {
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
	if l.Idle != nil && l.queue.Len() == 0 {
		l.Idle()
	}
	return true
}

// InformerFactory is what client-go's informer factories have in common.
type InformerFactory interface {
	Start(stop <-chan struct{})
	WaitForCacheSync(stop <-chan struct{}) map[reflect.Type]bool
}

// StartAndSync starts the factories and waits until every informer has
// listed its objects.
func StartAndSync(ctx context.Context, name string, fs ...InformerFactory) error {
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

// Tombstone unwraps the final state of an object deleted while the
// informer was disconnected.
func Tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}
