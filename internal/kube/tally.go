package kube

import (
	"log/slog"
	"slices"
	"sync"
	"time"
)

// tallyEvery is how long a busy controller's writes are counted before
// their summary is logged.
const tallyEvery = time.Minute

// Tally sums up a controller's writes: each at DEBUG as it happens, and
// at INFO one line with how many of each kind there were, when the
// controller's queue runs empty (Loop.Idle) or at the latest a minute
// after the first: a thousand namespaces given the bundle are one line.
type Tally struct {
	Log *slog.Logger
	Msg string // the summary's message
	Now func() time.Time

	mu     sync.Mutex
	counts map[string]int
	since  time.Time
}

// Add records one write of kind what (a summary attribute, e.g.
// "created") and logs msg with args at DEBUG.
func (t *Tally) Add(what, msg string, args ...any) {
	t.Log.Debug(msg, args...)
	t.mu.Lock()
	if t.counts == nil {
		t.counts, t.since = map[string]int{}, t.Now()
	}
	t.counts[what]++
	due := t.Now().Sub(t.since) >= tallyEvery
	t.mu.Unlock()
	if due {
		t.Flush()
	}
}

// Flush logs the summary of the writes since the last one, if any.
func (t *Tally) Flush() {
	t.mu.Lock()
	counts := t.counts
	t.counts = nil
	t.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	args := make([]any, 0, 2*len(kinds))
	for _, k := range kinds {
		args = append(args, k, counts[k])
	}
	t.Log.Info(t.Msg, args...)
}
