package rotation

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
)

// Kube wires r for Kubernetes mode: the leader takes operators'
// requests from the rotation ConfigMap and reports its status there.
func Kube(r *Rotator, store *rotationstore.Store, replica string) {
	// Other replicas' streams: each reports its own while a new root is
	// published, and the leader counts them; a replica that stopped
	// reporting counts until its pod is gone.
	r.AddConsumer("replicas", func(fp string) (int, []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reports, err := store.ReadReports(ctx)
		if err != nil {
			return 1, []string{"other replicas: " + err.Error()}
		}
		total, missing, now := 0, []string(nil), r.clock.Now()
		for _, rep := range reports {
			if rep.Replica == replica {
				continue
			}
			if quiet := now.Sub(rep.At); quiet > replicaReportFresh {
				// Quiet is not gone: a replica cut off from the API server
				// may still serve its workloads, which would refuse the new
				// root's peers. Gone is its pod gone; its report goes too.
				running, err := store.ReplicaRunning(ctx, rep.Replica)
				switch {
				case err != nil:
					total++
					missing = append(missing, fmt.Sprintf("replica %s (silent for %s; whether its pod runs is unknown: %v)", rep.Replica, quiet.Round(time.Second), err))
				case running:
					total++
					missing = append(missing, fmt.Sprintf("replica %s (silent for %s, and its pod still runs: it may serve workloads without the new root; activation waits until it reports again or its pod is gone, or --force)", rep.Replica, quiet.Round(time.Second)))
				default:
					if err := store.DeleteReport(ctx, rep.Replica); err != nil {
						r.log.Warn("root rotation: removing the report of a replica whose pod is gone", "replica", rep.Replica, "error", err.Error())
					}
				}
				continue
			}
			if rep.NextRoot != fp {
				total++
				missing = append(missing, fmt.Sprintf("replica %s (has not taken up the new root yet)", rep.Replica))
				continue
			}
			total += rep.Total
			for _, m := range rep.Missing {
				missing = append(missing, "replica "+rep.Replica+": "+m)
			}
		}
		return total, missing
	})
	r.poll = func(ctx context.Context) {
		req, err := store.ReadRequest(ctx)
		r.pollLog.note(r.log, r.clock.Now(), err, "root rotation: reading requests")
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.requestSeq == 0 {
			// A new leader: what was already taken is in the last report.
			if b, err := store.ReadStatus(ctx); err == nil {
				var st Status
				if json.Unmarshal(b, &st) == nil {
					r.requestSeq = st.RequestSeq
				}
			}
		}
		if req.Seq <= r.requestSeq {
			r.mu.Unlock()
			return
		}
		r.requestSeq = req.Seq
		r.mu.Unlock()
		if req.Abort {
			err = r.Abort()
		} else {
			err = r.Request(req.Target, req.Force)
		}
		r.mu.Lock()
		r.requestErr = ""
		if err != nil {
			r.requestErr = err.Error()
		}
		r.mu.Unlock()
	}
	r.report = func(ctx context.Context, st Status) {
		b, err := json.Marshal(st)
		if err == nil {
			err = store.WriteStatus(ctx, b)
		}
		r.reportLog.note(r.log, r.clock.Now(), err, "root rotation: writing the status")
	}
	// Every replica reports (a heartbeat every few seconds, at once when
	// its view changes), so that the leader knows which replicas there
	// are and waits for a report on the new root from each.
	var last rotationstore.ReplicaReport
	r.afterSync = func(ctx context.Context) {
		if ctx.Err() != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = store.DeleteReport(dctx, replica) // gone: not to be waited for
			return
		}
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		rep := rotationstore.ReplicaReport{Replica: replica, At: r.clock.Now()}
		if st.Phase == ca.PhasePublished {
			rep.NextRoot = st.NextRootSHA256
			// This replica's own consumers; the cluster's copies are the
			// leader's to count.
			if r.set != nil {
				for _, c := range r.set.Of(bundle.PerReplica) {
					t, m := c.Missing(st.NextRootSHA256)
					rep.Total += t
					rep.Missing = append(rep.Missing, m...)
				}
			}
		}
		if rep.NextRoot == last.NextRoot && rep.Total == last.Total && slices.Equal(rep.Missing, last.Missing) && rep.At.Sub(last.At) < replicaReportFresh/3 {
			return
		}
		if err := store.WriteReport(ctx, rep); err != nil {
			r.log.Error("root rotation: reporting this replica's streams", "error", err.Error())
			return
		}
		last = rep
	}
}

// replicaReportFresh is how old a replica's report may be and still
// count: a replica that stopped reporting has gone, and its streams with it.
const replicaReportFresh = 15 * time.Second

// Follow keeps a replica on the stored rotation until ctx is done.
func (r *Rotator) Follow(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last string
	for {
		if err := r.sync(ctx); err != nil && ctx.Err() == nil && err.Error() != last {
			last = err.Error()
			r.log.Error("root rotation: following the stored state", "error", last)
		}
		if r.afterSync != nil {
			r.afterSync(ctx)
		}
		select {
		case <-ctx.Done():
			if r.afterSync != nil {
				r.afterSync(ctx)
			}
			return nil
		case <-t.C:
		}
	}
}
