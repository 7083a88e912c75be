package rotation

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
		r.mu.Lock()
		publishing, published := r.st.Phase == ca.PhasePublished, r.st.PublishedAt
		r.mu.Unlock()
		return replicasMissing(store, replica, fp, publishing, published, r.clock.Now(), r.log)
	})
	r.watch = store.Watch
	var lastGC time.Time
	r.poll = func(ctx context.Context) {
		if now := r.clock.Now(); now.Sub(lastGC) >= reportGCEvery {
			lastGC = now
			r.mu.Lock()
			publishing := r.st.Phase == ca.PhasePublished
			r.mu.Unlock()
			if !publishing {
				collectReports(ctx, store, replica, now, r.log)
			}
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
	rep := newReplicaReporter(store, replica, r.clock, r.log)
	r.afterSync = func(ctx context.Context) {
		if ctx.Err() != nil {
			rep.leave()
			return
		}
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		fp := ""
		if st.Phase == ca.PhasePublished {
			fp = st.NextRootSHA256
		}
		var own []bundle.Consumer
		if r.set != nil {
			own = r.set.Of(bundle.PerReplica)
		}
		rep.report(ctx, fp, own)
	}
}

// replicasMissing is what the install's other replicas lack of the root
// fp, for the leader (self) of a rotation: from their reports, and while
// fp is published (since publishedAt) from the install's running pods
// too. A replica that has not taken up fp, one silent whose pod still
// runs, and one whose pod runs but never reported all count as missing;
// the report of one whose pod is gone is removed.
func replicasMissing(store *rotationstore.Store, self, fp string, publishing bool, publishedAt, now time.Time, log *slog.Logger) (int, []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reports, err := store.ReadReports(ctx)
	if err != nil {
		return 1, []string{"other replicas: " + err.Error()}
	}
	total, missing := 0, []string(nil)
	if publishing && now.Sub(publishedAt) < replicaReportWindow {
		// A replica in no pod is known by its report alone: give
		// every replica the time to see the new root and report.
		total++
		missing = append(missing, fmt.Sprintf("replicas that have not reported yet (activation waits %s after publishing for every replica to report its streams)", replicaReportWindow))
	}
	reported := map[string]bool{self: true}
	for _, rep := range reports {
		if rep.Replica == self {
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
					log.Warn("root rotation: removing the report of a replica whose pod is gone", "replica", rep.Replica, "error", err.Error())
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
	pods, err := store.Replicas(ctx, self)
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
}

// replicaReporter writes one replica's report while a new root is
// published (a heartbeat every few seconds, at once when its view
// changes), and removes it when the phase moves on; a report left from
// a previous life of the replica is removed at its first pass.
type replicaReporter struct {
	store    *rotationstore.Store
	replica  string
	clock    ca.Clock
	log      *slog.Logger
	last     rotationstore.ReplicaReport
	reported bool
	errs     errorLog
}

func newReplicaReporter(store *rotationstore.Store, replica string, clock ca.Clock, log *slog.Logger) *replicaReporter {
	return &replicaReporter{store: store, replica: replica, clock: clock, log: log, reported: true}
}

// report says which holders of own, this replica's consumers (the
// cluster's copies are the leader's to count), lack the published root
// fp; "" (nothing published) removes the report.
func (p *replicaReporter) report(ctx context.Context, fp string, own []bundle.Consumer) {
	if fp == "" {
		if p.reported {
			err := p.store.DeleteReport(ctx, p.replica)
			p.errs.note(p.log, p.clock.Now(), err, "root rotation: removing this replica's report")
			if err == nil {
				p.reported, p.last = false, rotationstore.ReplicaReport{}
			}
		}
		return
	}
	rep := rotationstore.ReplicaReport{Replica: p.replica, At: p.clock.Now(), NextRoot: fp}
	for _, c := range own {
		t, m := c.Missing(fp)
		rep.Total += t
		rep.Missing = append(rep.Missing, m...)
	}
	if rep.NextRoot == p.last.NextRoot && rep.Total == p.last.Total && slices.Equal(rep.Missing, p.last.Missing) && rep.At.Sub(p.last.At) < replicaReportFresh/3 {
		return
	}
	err := p.store.WriteReport(ctx, rep)
	p.errs.note(p.log, p.clock.Now(), err, "root rotation: reporting this replica's streams (the leader waits for them before activating)")
	if err == nil {
		p.last, p.reported = rep, true
	}
}

// leave removes the report of a replica that stops: gone, it is not to
// be waited for.
func (p *replicaReporter) leave() {
	if !p.reported {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.store.DeleteReport(ctx, p.replica)
}

// reportGCEvery is how often the leader looks for reports left by
// replicas that are gone.
const reportGCEvery = 30 * time.Second

// collectReports removes the reports of replicas that are gone: silent
// for longer than replicaReportFresh, and their pod gone. A replica that
// died leaves its report; a Deployment's replacement has another name.
// The leader calls it outside a publish (which counts the reports, and
// removes them likewise).
func collectReports(ctx context.Context, store *rotationstore.Store, self string, now time.Time, log *slog.Logger) {
	reports, err := store.ReadReports(ctx)
	if err != nil {
		return
	}
	for _, rep := range reports {
		if rep.Replica == self || now.Sub(rep.At) <= replicaReportFresh {
			continue
		}
		if running, err := store.ReplicaRunning(ctx, rep.Replica); err != nil || running {
			continue
		}
		if err := store.DeleteReport(ctx, rep.Replica); err != nil {
			log.Warn("root rotation: removing the report of a replica whose pod is gone", "replica", rep.Replica, "error", err.Error())
			continue
		}
		log.Info("root rotation: removed the report of a replica whose pod is gone", "replica", rep.Replica)
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
