package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"

	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
)

// kubeMetrics are Kubernetes mode's: made with the registry (the API
// clients count from their first request), registered by Kube.
type kubeMetrics struct {
	requests  *prometheus.CounterVec
	conflicts *prometheus.CounterVec
	invalid   prometheus.Counter
	lag       prometheus.Histogram
	// Node proxies' requests for other identities (nodeauth).
	impersonated prometheus.Counter
	impRefused   *prometheus.CounterVec
}

func newKubeMetrics() kubeMetrics {
	return kubeMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_kube_requests_total",
			Help: "Requests to the Kubernetes API server, by verb (get, list, watch, create, update, patch, delete), resource and HTTP status code (\"error\": no answer)."},
			[]string{"verb", "resource", "code"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_kube_owner_conflict_backoffs_total",
			Help: "Backoffs from an object warden keeps in other namespaces (kind ConfigMap or Secret): another install owns it (other_install), or another writer keeps changing it (fight)."},
			[]string{"kind", "reason"}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_ca_plugged_in_invalid_total",
			Help: "Changes to Secret cacerts ignored because its material is invalid (the current CA kept signing; the error is logged)."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warden_bundle_publish_lag_seconds",
			Help:    "Time from a trust bundle change until a namespace's istio-ca-root-cert held it, per namespace (the leader's).",
			Buckets: prometheus.ExponentialBuckets(.01, 2, 14)}),
		impersonated: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_ca_impersonations_total",
			Help: "Certificate requests of a trusted node proxy (ztunnel) for another identity that node authorization allowed."}),
		impRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_ca_impersonations_refused_total",
			Help: "Requests for another identity (ImpersonatedIdentity) that node authorization refused, by reason (the whole reason is logged); also counted in citadel_server_authentication_failure_count."},
			[]string{"reason"}),
	}
}

// Kube registers Kubernetes mode's metrics: the API requests (counted
// through KubeRequest), leadership, the owner guard's backoffs, cacerts
// updates ignored, the bundle's publish lag, and client-go's work queues.
func (r *Registry) Kube(leading func() bool) {
	for _, c := range []string{kube.OtherInstall, kube.Fight} {
		r.kube.conflicts.WithLabelValues("ConfigMap", c)
		r.kube.conflicts.WithLabelValues("Secret", c)
	}
	for _, reason := range nodeauth.Reasons {
		r.kube.impRefused.WithLabelValues(reason)
	}
	r.reg.MustRegister(r.kube.requests, r.kube.conflicts, r.kube.invalid, r.kube.lag, r.kube.impersonated, r.kube.impRefused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_kube_leader",
			Help: "1 while this replica leads (writes the bundle ConfigMaps, drives root rotations), else 0."},
			func() float64 {
				if leading() {
					return 1
				}
				return 0
			}))
	queues().register(r.reg)
}

// KubeRequest counts one API request (kube.Instrument's observer).
func (r *Registry) KubeRequest(verb, resource, code string) {
	r.kube.requests.WithLabelValues(verb, resource, code).Inc()
}

// OwnerConflict counts a backoff of the owner guard (kube.Guard.Backoff).
func (r *Registry) OwnerConflict(kind, reason string) {
	r.kube.conflicts.WithLabelValues(kind, reason).Inc()
}

// Impersonation is nodeauth.Authorizer's Observe: reason "" for an
// impersonation allowed, else one of nodeauth.Reasons.
func (r *Registry) Impersonation(reason string) {
	if reason == "" {
		r.kube.impersonated.Inc()
		return
	}
	r.kube.impRefused.WithLabelValues(reason).Inc()
}

// PluggedInInvalid counts an invalid cacerts update ignored.
func (r *Registry) PluggedInInvalid() { r.kube.invalid.Inc() }

// BundlePublished observes a namespace's bundle publish lag.
func (r *Registry) BundlePublished(lag time.Duration) { r.kube.lag.Observe(lag.Seconds()) }

// queueMetrics is client-go's work queue metrics provider: a process
// holds one (workqueue.SetProvider takes the first it is given), its
// collectors registered in every registry of the process (tests run
// several serves in one process; their queues' series are shared).
type queueMetrics struct {
	depth, unfinished, longest *prometheus.GaugeVec
	adds, retries              *prometheus.CounterVec
	latency, work              *prometheus.HistogramVec
}

var (
	queueOnce sync.Once
	queueProv *queueMetrics
)

// queues is the process's provider, set in client-go on first use (before
// the leader makes its queues).
func queues() *queueMetrics {
	queueOnce.Do(func() {
		name := []string{"name"}
		buckets := prometheus.ExponentialBuckets(1e-6, 10, 10)
		queueProv = &queueMetrics{
			depth:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_depth", Help: "Current depth of a work queue (client-go)."}, name),
			adds:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "workqueue_adds_total", Help: "Adds handled by a work queue (client-go)."}, name),
			latency:    prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "workqueue_queue_duration_seconds", Help: "How long an item stays in a work queue before being requested (client-go).", Buckets: buckets}, name),
			work:       prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "workqueue_work_duration_seconds", Help: "How long processing an item from a work queue takes (client-go).", Buckets: buckets}, name),
			unfinished: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_unfinished_work_seconds", Help: "Seconds of work in progress not yet observed by work_duration; large values mean stuck workers (client-go)."}, name),
			longest:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_longest_running_processor_seconds", Help: "Seconds the longest running processor of a work queue has been running (client-go)."}, name),
			retries:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "workqueue_retries_total", Help: "Retries handled by a work queue (client-go)."}, name),
		}
		workqueue.SetProvider(queueProv)
	})
	return queueProv
}

func (q *queueMetrics) register(reg *prometheus.Registry) {
	reg.MustRegister(q.depth, q.adds, q.latency, q.work, q.unfinished, q.longest, q.retries)
}

var _ workqueue.MetricsProvider = (*queueMetrics)(nil)

func (q *queueMetrics) NewDepthMetric(name string) workqueue.GaugeMetric {
	return q.depth.WithLabelValues(name)
}

func (q *queueMetrics) NewAddsMetric(name string) workqueue.CounterMetric {
	return q.adds.WithLabelValues(name)
}

func (q *queueMetrics) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return q.latency.WithLabelValues(name)
}

func (q *queueMetrics) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return q.work.WithLabelValues(name)
}

func (q *queueMetrics) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return q.unfinished.WithLabelValues(name)
}

func (q *queueMetrics) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return q.longest.WithLabelValues(name)
}

func (q *queueMetrics) NewRetriesMetric(name string) workqueue.CounterMetric {
	return q.retries.WithLabelValues(name)
}
