// Package metrics owns warden's Prometheus metrics: one registry per
// process, served on the HTTP port's /metrics. Where Istio has a metric
// for the same thing it has Istio's name and meaning (citadel_server_*,
// pilot_*), so existing dashboards and alerts keep working; warden's own
// start with warden_. No label carries an identity or a node: label
// values come from small fixed sets (outcomes, xDS types, reasons).
//
// The servers report through small observer interfaces they define
// (ca/server.Observer, xds/server.Observer) or through counters they
// expose; this package adapts them, so that no core imports Prometheus.
package metrics

import (
	"crypto/x509"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/xds"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// Registry is one process's metrics.
type Registry struct {
	reg *prometheus.Registry

	csr, success, authn, parse, idExtract prometheus.Counter
	signErr                               *prometheus.CounterVec
	signing                               prometheus.Histogram

	proxies     *prometheus.GaugeVec
	versionsMu  sync.Mutex
	versions    map[string]bool // ISTIO_VERSION label values in use (at most maxVersions)
	pushes      *prometheus.CounterVec
	pushTime    *prometheus.HistogramVec
	convergence prometheus.Histogram
	rejects     *prometheus.CounterVec

	reviewTime      prometheus.Histogram
	reviewCache     prometheus.Counter
	revoked         prometheus.Counter
	reviewErrors    prometheus.Counter
	authUnavailable prometheus.Counter
	reviewRefusals  prometheus.Counter

	validPassed, validFailed *prometheus.CounterVec
	validHTTPErrors          *prometheus.CounterVec
	kube                     kubeMetrics
}

// New is a registry with the Go runtime's and the process's collectors
// (heap, goroutines, CPU seconds, RSS) and warden serve's metrics.
func New() *Registry {
	r := &Registry{reg: prometheus.NewRegistry(), kube: newKubeMetrics()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		r.reg.MustRegister(c)
		return c
	}
	r.csr = counter("citadel_server_csr_count", "The number of CSRs received by the CA (Istio's metric).")
	r.success = counter("citadel_server_success_cert_issuance_count", "The number of certificates issued (Istio's metric).")
	r.authn = counter("citadel_server_authentication_failure_count", "The number of certificate requests whose caller could not be authenticated (Istio's metric).")
	r.parse = counter("citadel_server_csr_parsing_err_count", "The number of CSRs refused as malformed: not parsing, a bad signature, or a refused key (Istio's metric).")
	r.idExtract = counter("citadel_server_id_extraction_err_count", "The number of CSRs refused because the identity they name is not the caller's (Istio's metric; see docs/metrics.md).")
	r.signErr = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "citadel_server_csr_sign_err_count",
		Help: "The number of certificate requests that failed at signing, by error: invalid_ttl, unavailable (no CA material), sign_error (Istio's metric)."}, []string{"error"})
	r.signing = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warden_ca_signing_seconds",
		Help: "Time to check a CSR and sign its certificate, for certificates issued.", Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14)})
	r.proxies = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pilot_xds",
		Help: "Proxies connected over ADS, by the Istio version their node metadata names (Istio's metric)."}, []string{"version"})
	r.proxies.WithLabelValues("")
	r.versions = map[string]bool{"": true}
	r.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_xds_pushes",
		Help: "Configuration pushes to proxies, by xDS type: cds, eds, lds, rds, sds (Istio's metric)."}, []string{"type"})
	r.pushTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pilot_xds_push_time",
		Help: "Time to build and set a proxy's new configuration, by xDS type (Istio's metric).", Buckets: []float64{.01, .1, 1, 3, 5, 10, 20, 30}}, []string{"type"})
	r.convergence = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pilot_proxy_convergence_time",
		Help: "Time from a push's start until the proxy ACKed every type pushed (Istio's metric).", Buckets: []float64{.1, .5, 1, 3, 5, 10, 20, 30}})
	r.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_total_xds_rejects",
		Help: "Configuration rejected by proxies (NACK), by xDS type (Istio's metric)."}, []string{"type"})
	r.revoked = counter("warden_xds_streams_revoked_total", "ADS streams closed because the workload they stood for no longer runs as the identity that opened them (an address registered to another service account).")
	r.reviewTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warden_tokenreview_seconds",
		Help: "Time of a Kubernetes TokenReview (tokens not answered from the cache).", Buckets: prometheus.ExponentialBuckets(.001, 2, 14)})
	r.reviewCache = counter("warden_tokenreview_cache_hits_total", "Bearer tokens accepted from the TokenReview cache, without an API call.")
	r.reviewRefusals = counter("warden_tokenreview_failures_total", "TokenReviews that refused the token.")
	r.reviewErrors = counter("warden_tokenreview_errors_total", "TokenReviews the API server did not answer (unreachable, or refusing warden itself): the token was not judged, and the workload was answered Unavailable.")
	r.authUnavailable = counter("warden_ca_authentication_unavailable_total", "Certificate requests answered Unavailable because their credentials could not be checked (TokenReview unanswered), apart from authentication failures.")
	r.validPassed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "galley_validation_passed",
		Help: "Istio configuration the validating webhook admitted (Istio's metric)."}, []string{"group", "version", "resource"})
	r.validFailed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "galley_validation_failed",
		Help: "Istio configuration the validating webhook refused, by reason (Istio's metric; dry runs are not counted)."}, []string{"group", "version", "resource", "reason"})
	r.validHTTPErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "galley_validation_http_error",
		Help: "Requests to the validating webhook answered with an HTTP error, not an AdmissionReview (Istio's metric)."}, []string{"status"})
	r.reg.MustRegister(r.signErr, r.signing, r.proxies, r.pushes, r.pushTime, r.convergence, r.rejects, r.reviewTime, r.validPassed, r.validFailed, r.validHTTPErrors)
	// Zero values exist before the first event, so rate() and alerts see
	// them at once.
	for _, e := range []server.Outcome{server.InvalidTTL, server.NotReady, server.SignError} {
		r.signErr.WithLabelValues(string(e))
	}
	for _, t := range []string{"cds", "eds", "lds", "rds", "sds"} {
		r.pushes.WithLabelValues(t)
		r.pushTime.WithLabelValues(t)
		r.rejects.WithLabelValues(t)
	}
	return r
}

// Handler serves the registry.
func (r *Registry) Handler() http.Handler { return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}) }

// CertificateRequest implements ca/server.Observer.
func (r *Registry) CertificateRequest(o server.Outcome, d time.Duration) {
	r.csr.Inc()
	switch o {
	case server.Issued:
		r.success.Inc()
		r.signing.Observe(d.Seconds())
	case server.Unauthenticated:
		r.authn.Inc()
	case server.AuthUnavailable:
		r.authUnavailable.Inc()
	case server.InvalidCSR:
		r.parse.Inc()
	case server.IdentityMismatch:
		r.idExtract.Inc()
	default:
		r.signErr.WithLabelValues(string(o)).Inc()
	}
}

var _ server.Observer = (*Registry)(nil)
var _ xdsserver.Observer = (*Registry)(nil)

// maxVersions bounds pilot_xds's version label values: proxies choose
// them, and versions beyond the first maxVersions count as "other".
const maxVersions = 32

// ProxiesChanged implements xds/server.Observer.
func (r *Registry) ProxiesChanged(version string, delta int) {
	r.versionsMu.Lock()
	if !r.versions[version] {
		if len(r.versions) < maxVersions {
			r.versions[version] = true
		} else {
			version = "other" // the same for the proxy's connect and disconnect: the set is full for good
		}
	}
	r.versionsMu.Unlock()
	r.proxies.WithLabelValues(version).Add(float64(delta))
}

// Pushed implements xds/server.Observer.
func (r *Registry) Pushed(typeURL string, d time.Duration) {
	t := xdsType(typeURL)
	r.pushes.WithLabelValues(t).Inc()
	r.pushTime.WithLabelValues(t).Observe(d.Seconds())
}

// Converged implements xds/server.Observer.
func (r *Registry) Converged(d time.Duration) { r.convergence.Observe(d.Seconds()) }

// Rejected implements xds/server.Observer.
func (r *Registry) Rejected(typeURL string) { r.rejects.WithLabelValues(xdsType(typeURL)).Inc() }

// StreamRevoked implements xds/server.Observer.
func (r *Registry) StreamRevoked() { r.revoked.Inc() }

// xdsType is the type label: Istio's short name of an xDS type URL.
func xdsType(typeURL string) string {
	if t := xds.ShortType(typeURL); t != "" {
		return t
	}
	return "other"
}

// ValidationResult implements webhook.Observer: reason is "" for an
// admitted object (the webhook bounds the label values).
func (r *Registry) ValidationResult(group, version, resource, reason string) {
	if reason == "" {
		r.validPassed.WithLabelValues(group, version, resource).Inc()
		return
	}
	r.validFailed.WithLabelValues(group, version, resource, reason).Inc()
}

// ValidationHTTPError implements webhook.Observer.
func (r *Registry) ValidationHTTPError(status int) {
	r.validHTTPErrors.WithLabelValues(strconv.Itoa(status)).Inc()
}

// TokenReview is tokenreview.Authenticator's Observe.
func (r *Registry) TokenReview(d time.Duration, cached bool, err error) {
	switch {
	case cached:
		r.reviewCache.Inc()
		return
	case errors.Is(err, server.ErrUnavailable):
		r.reviewErrors.Inc()
	case err != nil:
		r.reviewRefusals.Inc()
	}
	r.reviewTime.Observe(d.Seconds())
}

// Authority exports the CA's expiry, as Istio does: the signing root's
// and the signing certificate's (the intermediate, or the root itself
// when it signs) NotAfter as Unix timestamps, and the seconds left.
func (r *Registry) Authority(a *ca.Authority, clock ca.Clock) {
	notAfter := func(pick func(m *ca.Material) *x509.Certificate) func() float64 {
		return func() float64 {
			m := a.Material()
			if m == nil {
				return 0
			}
			if c := pick(m); c != nil {
				return float64(c.NotAfter.Unix())
			}
			return 0
		}
	}
	root := notAfter(func(m *ca.Material) *x509.Certificate {
		if rs := a.Bundles().Roots(); len(rs) > 0 {
			return rs[0]
		}
		return nil
	})
	chain := notAfter(func(m *ca.Material) *x509.Certificate { return m.Cert })
	left := func(ts func() float64) func() float64 {
		return func() float64 {
			if t := ts(); t != 0 {
				return t - float64(clock.Now().Unix())
			}
			return 0
		}
	}
	r.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_root_cert_expiry_timestamp", Help: "Unix time the signing root expires (Istio's metric)."}, root),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_root_cert_expiry_seconds", Help: "Seconds until the signing root expires; negative once expired (Istio's metric)."}, left(root)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_cert_chain_expiry_timestamp", Help: "Unix time the signing CA certificate expires (Istio's metric)."}, chain),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_cert_chain_expiry_seconds", Help: "Seconds until the signing CA certificate expires; negative once expired (Istio's metric)."}, left(chain)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_ca_intermediate_expiry_seconds",
			Help: "Seconds until the signing CA certificate (or the first certificate above it) expires; workload certificates are clamped to it."}, func() float64 {
			m := a.Material()
			if m == nil {
				return 0
			}
			return m.NotAfter().Sub(clock.Now()).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_ca_trust_bundle_roots", Help: "Roots in the trust bundle (2 during a root rotation's overlap)."},
			func() float64 { return float64(len(a.Bundles().Roots())) }),
	)
}

// Rotation exports the root rotation's phase and starts.
func (r *Registry) Rotation(phase func() float64, started func() int64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "warden_ca_rotation_phase",
		Help: "Phase of the root rotation in progress: 0 none, 1 prepared, 2 published, 3 activated.",
	}, phase), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "warden_ca_root_rotations_started_total",
		Help: "Root rotations started, by request or automatically (Vault mode: new Vault roots published), since this process started.",
	}, func() float64 { return float64(started()) }))
}

// SDS exports central SDS's open streams and pushes.
func (r *Registry) SDS(streams func() int, pushes func() uint64) {
	r.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_sds_streams", Help: "Open SDS streams."}, func() float64 { return float64(streams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_sds_pushes_total", Help: "SDS snapshots set: a certificate or trust bundle change pushed to its streams."},
			func() float64 { return float64(pushes()) }))
}

// XDSReports exports the number of distinct compiler reports in the
// connected proxies' configuration.
func (r *Registry) XDSReports(n func() int) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_xds_config_reports",
		Help: "Distinct reports (conflicts, settings not applied) in the configuration of the connected proxies; see the log or warden proxy-config."},
		func() float64 { return float64(n()) }))
}

// Vault exports the intermediate's renewals.
func (r *Registry) Vault(counts func() (renewed, failed uint64)) {
	r.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_vault_renewals_total", Help: "Intermediates obtained from Vault, proven and activated."},
			func() float64 { n, _ := counts(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_vault_renewal_failures_total", Help: "Attempts to obtain an intermediate from Vault that failed (the current one kept signing)."},
			func() float64 { _, n := counts(); return float64(n) }))
}

// ConfigRejected exports the configuration objects left out: invalid
// objects now (Kubernetes), and reloads refused (a directory).
func (r *Registry) ConfigRejected(objects func() int, reloads func() uint64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_config_rejected_objects",
		Help: "Configuration objects that failed validation: a new one left out, an edit of one in effect refused with its previous version kept (each is logged with its error)."}, func() float64 { return float64(objects()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_config_reload_failures_total",
			Help: "Configuration directory reloads refused for an invalid file (the previous configuration stays)."}, func() float64 { return float64(reloads()) }))
}

// AgentStats are what warden agent exports.
type AgentStats struct {
	Cache   func() (rotated, failed uint64, held int, earliest time.Time) // sds.Cache.Stats
	Streams func() int                                                    // open SDS streams
	Roots   func() int                                                    // roots in the bundle it serves
}

// NewAgent is warden agent's registry: the Go runtime's and process's
// collectors and the agent's certificates and streams.
func NewAgent(s AgentStats) *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	stat := func(pick func(rotated, failed uint64, held int, earliest time.Time) float64) func() float64 {
		return func() float64 { return pick(s.Cache()) }
	}
	r.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_agent_svids", Help: "Workload certificates (SVIDs) the agent holds."},
			stat(func(_, _ uint64, held int, _ time.Time) float64 { return float64(held) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_agent_svid_expiry_timestamp", Help: "Unix time the first of the agent's SVIDs expires (0: none held)."},
			stat(func(_, _ uint64, _ int, earliest time.Time) float64 {
				if earliest.IsZero() {
					return 0
				}
				return float64(earliest.Unix())
			})),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_agent_svid_rotations_total", Help: "SVIDs renewed from the CA."},
			stat(func(rotated, _ uint64, _ int, _ time.Time) float64 { return float64(rotated) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "warden_agent_svid_rotation_failures_total", Help: "Renewals that failed (the current SVID is served until it expires; then none)."},
			stat(func(_, failed uint64, _ int, _ time.Time) float64 { return float64(failed) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_agent_sds_streams", Help: "Open SDS streams on the agent's socket."}, func() float64 { return float64(s.Streams()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_agent_trust_bundle_roots", Help: "Roots in the trust bundle the agent serves."}, func() float64 { return float64(s.Roots()) }),
	)
	return r
}

// PodCertificates is the pod-certificate signer's observer
// (podcert.Observer): requests issued, denied by reason, put off by
// cause, and the time from a request's creation to its issue.
type PodCertificates struct {
	issued          prometheus.Counter
	denied, retried *prometheus.CounterVec
	latency         prometheus.Histogram
}

// PodCertificates registers the signer's metrics, every reason and cause
// a series from the start, and pending, the requests not yet settled.
func (r *Registry) PodCertificates(reasons, causes []string, pending func() int) *PodCertificates {
	m := &PodCertificates{
		issued: prometheus.NewCounter(prometheus.CounterOpts{Name: "warden_podcert_issued_total",
			Help: "Pod certificate requests issued (Kubernetes mode, leader)."}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_podcert_denied_total",
			Help: "Pod certificate requests denied, by the reason of their Denied condition."}, []string{"reason"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "warden_podcert_retries_total",
			Help: "Pod certificate requests put off to be retried, by cause: ca_unavailable, ca_expiring (the CA ends within the API's one-hour minimum), api_error, conflict, rejected (the API server refused the status)."}, []string{"cause"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warden_podcert_issue_seconds",
			Help:    "Time from a pod certificate request's creation (whole seconds, as the API server stamps it) to its issue.",
			Buckets: []float64{.5, 1, 2, 5, 10, 30, 60, 300}}),
	}
	for _, reason := range reasons {
		m.denied.WithLabelValues(reason)
	}
	for _, c := range causes {
		m.retried.WithLabelValues(c)
	}
	r.reg.MustRegister(m.issued, m.denied, m.retried, m.latency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "warden_podcert_pending", Help: "Pod certificate requests for warden's signer not yet issued or denied."},
			func() float64 { return float64(pending()) }))
	return m
}

// Issued counts a request issued, latency after its creation.
func (m *PodCertificates) Issued(latency time.Duration) {
	m.issued.Inc()
	m.latency.Observe(latency.Seconds())
}

// Denied counts a request denied for reason.
func (m *PodCertificates) Denied(reason string) { m.denied.WithLabelValues(reason).Inc() }

// Retried counts a request put off for cause.
func (m *PodCertificates) Retried(cause string) { m.retried.WithLabelValues(cause).Inc() }
