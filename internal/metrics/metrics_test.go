package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/internal/kube/nodeauth"
	"github.com/wardenmesh/warden/internal/metrics"
)

// TestProxyVersionsBounded: pilot_xds is labelled with each proxy's
// version, as istiod's is; since proxies choose it, the label takes at
// most 32 values, and proxies of further versions are counted as
// "other", on connecting and on leaving alike.
func TestProxyVersionsBounded(t *testing.T) {
	r := metrics.New()
	for i := range 40 {
		r.ProxiesChanged(fmt.Sprintf("1.%d.0", i), 1)
	}
	r.ProxiesChanged("1.39.0", -1) // an "other" one leaves
	r.ProxiesChanged("1.0.0", -1)  // a labelled one leaves
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	series := map[string]string{}
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "pilot_xds{") {
			k, v, _ := strings.Cut(l, " ")
			series[k] = v
		}
	}
	if len(series) != 33 { // "" (present from the start), 31 versions, other
		t.Errorf("%d pilot_xds series, want 33:\n%v", len(series), series)
	}
	for k, want := range map[string]string{`pilot_xds{version="other"}`: "8", `pilot_xds{version="1.0.0"}`: "0", `pilot_xds{version="1.30.0"}`: "1", `pilot_xds{version=""}`: "0"} {
		if series[k] != want {
			t.Errorf("%s = %q, want %s", k, series[k], want)
		}
	}
	if _, ok := series[`pilot_xds{version="1.31.0"}`]; ok {
		t.Error("a 33rd version got its own series")
	}
}

// TestEverySeriesFromTheStart: the per-type xDS series exist before the
// first push, so dashboards and rate() see zeros rather than nothing.
func TestEverySeriesFromTheStart(t *testing.T) {
	r := metrics.New()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{`pilot_xds_push_time_count{type="lds"} 0`, `pilot_xds_pushes{type="cds"} 0`, `pilot_total_xds_rejects{type="sds"} 0`, "warden_xds_streams_revoked_total 0"} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("no %q before any push", want)
		}
	}
}

// TestValidationMetrics: the validating webhook's outcomes under Istio's
// names and labels.
func TestValidationMetrics(t *testing.T) {
	r := metrics.New()
	r.ValidationResult("security.istio.io", "v1", "peerauthentications", "")
	r.ValidationResult("security.istio.io", "v1", "peerauthentications", "invalid_resource")
	r.ValidationResult("security.istio.io", "v1", "peerauthentications", "invalid_resource")
	r.ValidationHTTPError(http.StatusUnsupportedMediaType)
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`galley_validation_passed{group="security.istio.io",resource="peerauthentications",version="v1"} 1`,
		`galley_validation_failed{group="security.istio.io",reason="invalid_resource",resource="peerauthentications",version="v1"} 2`,
		`galley_validation_http_error{status="415"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("no %q", want)
		}
	}
}

// TestImpersonationMetrics: in Kubernetes mode the node authorizer's
// outcomes are counted, every refusal reason present from the start.
func TestImpersonationMetrics(t *testing.T) {
	r := metrics.New()
	r.Kube(func() bool { return false })
	r.Impersonation("")
	r.Impersonation("")
	r.Impersonation(nodeauth.ReasonNotOnNode)
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		"warden_ca_impersonations_total 2",
		`warden_ca_impersonations_refused_total{reason="not_on_node"} 1`,
		`warden_ca_impersonations_refused_total{reason="untrusted"} 0`,
		`warden_ca_impersonations_refused_total{reason="pod_uid"} 0`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("no %q", want)
		}
	}
}
