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
// requests from the rotation ConfigMap and reports its status there;
// every replica follows the stored state. Both read the ConfigMap from a
// watch (Follow starts it), not by polling the API server.
//
// Replicas report their own bundle consumers (their SDS and ADS streams)
// only while a new root is published, the one phase in which the leader
// waits for them: a heartbeat every few seconds, and at once when their
// view changes; they remove their report when the phase moves on. The
// leader learns which replicas there are from those reports and from the
// install's pods (Store.Replicas: the running pods with its own pod's
// labels), so that a replica that has not reported (cut off from the API
// server since before the rotation started) still holds activation while
// its pod runs. A replica without a pod (serve run by hand, or by a test)
// is known by its reports alone: activation waits replicaReportWindow
// after publishing for every replica to report. Reports left by a replica that died are
// removed by the leader once its pod is gone.
func Kube(r *Rotator, store *rotationstore.Store, replica string) {
	r.AddConsumer("replicas", func(fp string) (int, []string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reports, err := store.ReadReports(ctx)
		if err != nil {
			return 1, []string{"other replicas: " + err.Error()}
		}
		total, missing, now := 0, []string(nil), r.clock.Now()
		r.mu.Lock()
		publishing, published := r.st.Phase == ca.PhasePublished, r.st.PublishedAt
		r.mu.Unlock()
		if publishing && now.Sub(published) < replicaReportWindow {
			// A replica in no pod is known by its report alone: give
			// every replica the time to see the new root and report.
			total++
			missing = append(missing, fmt.Sprintf("replicas that have not reported yet (activation waits %s after publishing for every replica to report its streams)", replicaReportWindow))
		}
		reported := map[string]bool{replica: true}
		for _, rep := range reports {
			if rep.Replica == replica {
				continue
			}
			reported[rep.Replica] = true
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
		// The install's running pods that have not reported, while the
		// leader waits for them (publishing; the status of other phases
		// does not list the pods every second).
		if !publishing {
			return total, missing
		}
		pods, err := store.Replicas(ctx, replica)
		if err != nil {
			total++
			missing = append(missing, "the install's other replicas: "+err.Error())
		}
		for _, p := range pods {
			if !reported[p] {
				total++
				missing = append(missing, fmt.Sprintf("replica %s (its pod runs, and it has not reported on the new root: it may serve workloads without it; activation waits until it reports or its pod is gone, or --force)", p))
			}
		}
		return total, missing
	})
	r.watch = store.Watch
	var lastGC time.Time
	r.poll = func(ctx context.Context) {
		if now := r.clock.Now(); now.Sub(lastGC) >= reportGCEvery {
			lastGC = now
			r.collectReports(ctx, store, replica)
		}
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
	// Every replica reports while a new root is published (a heartbeat
	// every few seconds, at once when its view changes), and removes its
	// report when the phase moves on; a report left from a previous life
	// of this replica is removed at its first pass.
	var last rotationstore.ReplicaReport
	reported := true
	var reportLog errorLog
	r.afterSync = func(ctx context.Context) {
		if ctx.Err() != nil {
			if reported {
				dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = store.DeleteReport(dctx, replica) // gone: not to be waited for
			}
			return
		}
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		if st.Phase != ca.PhasePublished {
			if reported {
				err := store.DeleteReport(ctx, replica)
				reportLog.note(r.log, r.clock.Now(), err, "root rotation: removing this replica's report")
				if err == nil {
					reported, last = false, rotationstore.ReplicaReport{}
				}
			}
			return
		}
		rep := rotationstore.ReplicaReport{Replica: replica, At: r.clock.Now(), NextRoot: st.NextRootSHA256}
		// This replica's own consumers; the cluster's copies are the
		// leader's to count.
		if r.set != nil {
			for _, c := range r.set.Of(bundle.PerReplica) {
				t, m := c.Missing(st.NextRootSHA256)
				rep.Total += t
				rep.Missing = append(rep.Missing, m...)
			}
		}
		if rep.NextRoot == last.NextRoot && rep.Total == last.Total && slices.Equal(rep.Missing, last.Missing) && rep.At.Sub(last.At) < replicaReportFresh/3 {
			return
		}
		err := store.WriteReport(ctx, rep)
		reportLog.note(r.log, r.clock.Now(), err, "root rotation: reporting this replica's streams (the leader waits for them before activating)")
		if err == nil {
			last, reported = rep, true
		}
	}
}

// reportGCEvery is how often the leader looks for reports left by
// replicas that are gone.
const reportGCEvery = 30 * time.Second

// collectReports removes, outside a publish (which counts them, and
// removes them likewise), the reports of replicas that are gone: silent
// for longer than replicaReportFresh, and their pod gone. A replica that
// died leaves its report; a Deployment's replacement has another name.
func (r *Rotator) collectReports(ctx context.Context, store *rotationstore.Store, self string) {
	r.mu.Lock()
	phase := r.st.Phase
	r.mu.Unlock()
	if phase == ca.PhasePublished {
		return
	}
	reports, err := store.ReadReports(ctx)
	if err != nil {
		return
	}
	now := r.clock.Now()
	for _, rep := range reports {
		if rep.Replica == self || now.Sub(rep.At) <= replicaReportFresh {
			continue
		}
		if running, err := store.ReplicaRunning(ctx, rep.Replica); err != nil || running {
			continue
		}
		if err := store.DeleteReport(ctx, rep.Replica); err != nil {
			r.log.Warn("root rotation: removing the report of a replica whose pod is gone", "replica", rep.Replica, "error", err.Error())
			continue
		}
		r.log.Info("root rotation: removed the report of a replica whose pod is gone", "replica", rep.Replica)
	}
}

// replicaReportWindow is how long after publishing activation waits, at
// least, for the replicas to report: they report within a second of the
// watch bringing the new phase.
const replicaReportWindow = 5 * time.Second

// replicaReportFresh is how old a replica's report may be and still
// count: a replica that stopped reporting has gone, and its streams with it.
const replicaReportFresh = 15 * time.Second

// Follow keeps a replica on the stored rotation until ctx is done: at
// once when the watch brings a change, else every second (which reads
// the watch's cache, not the API server).
func (r *Rotator) Follow(ctx context.Context) error {
	if r.watch != nil {
		go func() {
			err := r.watch(ctx, func() {
				r.poke()
				select {
				case r.followKick <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				r.log.Error("root rotation: watching the stored state; reading it from the API server every second instead", "error", err.Error())
			}
		}()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var syncLog errorLog
	for {
		if err := r.sync(ctx); ctx.Err() == nil {
			syncLog.note(r.log, r.clock.Now(), err, "root rotation: following the stored state")
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
		case <-r.followKick:
		}
	}
}
