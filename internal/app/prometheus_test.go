package app_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/testkit"

	"sigs.k8s.io/yaml"
)

// A real Prometheus (hack/prometheus.sh builds it from the module proxy;
// make test passes the folder in WARDEN_PROMETHEUS_DIR) scrapes a running
// warden serve under load and evaluates deploy/grafana/warden.json's
// queries and deploy/prometheus/warden-rules.yaml's alerts.

func prometheusDir(t *testing.T) string {
	return toolDir(t, "WARDEN_PROMETHEUS_DIR", "hack/prometheus.sh", "prometheus", "promtool")
}

// promQuery evaluates q now: the number of series, or the error
// Prometheus gives.
func promQuery(t *testing.T, addr, q string) (int, error) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status, Error string
		Data          struct {
			ResultType string
			Result     json.RawMessage
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	var series []any
	if r.Data.ResultType == "vector" || r.Data.ResultType == "matrix" {
		if err := json.Unmarshal(r.Data.Result, &series); err != nil {
			return 0, err
		}
		return len(series), nil
	}
	return 1, nil // a scalar
}

// promSeries is promQuery retried for up to 20 s until the query has a
// series: rates need two scrapes after the load, and a slow scrape can
// leave a gap.
func promSeries(t *testing.T, addr, q string) (n int, err error) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if n, err = promQuery(t, addr, q); (err == nil && n > 0) || time.Now().After(deadline) {
			return n, err
		}
	}
}

// signals splits an alert expression at its top-level "and", "or" and
// "unless", and each part at its last top-level comparison: the
// quantities the alert watches, which must have data even when it does
// not fire.
func signals(expr string) []string {
	var parts []string
	start := 0
	topLevel(expr, []string{" and ", " or ", " unless "}, func(i int, op string) {
		parts = append(parts, expr[start:i])
		start = i + len(op)
	})
	parts = append(parts, expr[start:])
	var out []string
	for _, p := range parts {
		cut := -1
		topLevel(p, []string{" > ", " < ", " >= ", " <= ", " == ", " != "}, func(i int, _ string) { cut = i })
		if cut >= 0 {
			p = p[:cut]
		}
		out = append(out, strings.TrimSpace(p))
	}
	return out
}

// topLevel calls found for each of ops occurring in expr outside any
// brackets, at its index.
func topLevel(expr string, ops []string, found func(i int, op string)) {
	depth := 0
	for i := 0; i < len(expr); i++ {
		switch expr[i] {
		case '(', '[', '{':
			depth++
		case ')', ']', '}':
			depth--
		case ' ':
			if depth == 0 {
				for _, op := range ops {
					if strings.HasPrefix(expr[i:], op) {
						found(i, op)
					}
				}
			}
		}
	}
}

// TestDashboardAndAlerts: promtool accepts the rules; Prometheus scrapes
// a standalone warden serve while bench ca loads it and a proxy
// converges, and a Vault-mode serve beside it; every dashboard query
// returns data, every alert expression parses and the quantities it
// watches have data; the standalone serve exports no warden_vault_*
// series (Vault's exist in Vault mode only), the Vault one does; and
// with a root that expires in 20 days, the root expiry alert fires.
func TestDashboardAndAlerts(t *testing.T) {
	bin := prometheusDir(t)
	rules, _ := filepath.Abs("../../deploy/prometheus/warden-rules.yaml")
	if out, err := exec.Command(filepath.Join(bin, "promtool"), "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}

	httpAddr := testkit.FreeAddr(t)
	m := startMeshWith(t, nil, nil, []string{"--http-listen", httpAddr, "--root-ttl", "480h", "--auto-rotate-root", "0"}, "default/sleep")
	v, vdir := vaultSetup(t, "approle")
	vaultHTTP := testkit.FreeAddr(t)
	serve(t, filepath.Join(t.TempDir(), "vault"), append(approleFlags(v, vdir), "--http-listen", vaultHTTP)...)
	promAddr := testkit.FreeAddr(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
- job_name: warden
  static_configs: [{targets: [%q, %q]}]
`, rules, httpAddr, vaultHTTP)
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "prometheus"), "--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", promAddr)
	startLogged(t, cmd, cancel, "prometheus")
	eventuallyCalls(t, func() error {
		n, err := promQuery(t, promAddr, `up{job="warden"} == 1`)
		if err == nil && n < 2 {
			err = fmt.Errorf("%d of the 2 serves scraped", n)
		}
		return err
	})

	// Load: certificates, and a proxy that converges.
	if code, _, stderr := run(t, "bench", "ca", "--addr", m.addr, "--data-dir", m.data, "--duration", "2s", "--warmup", "100ms",
		"--concurrency", "4", "--server-metrics", ""); code != 0 {
		t.Fatalf("bench ca: %s", stderr)
	}
	root, _ := os.ReadFile(filepath.Join(m.data, "root-cert.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	raw, _ := os.ReadFile(filepath.Join(m.dir, "default-sleep.token"))
	adsProxy(t, m.addr, pool, strings.TrimSpace(string(raw)))
	time.Sleep(3 * time.Second) // a few scrapes after the load

	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile("../../deploy/grafana/warden.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana/warden.json: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			q := strings.ReplaceAll(tg.Expr, "$job", ".*")
			queries++
			if n, err := promSeries(t, promAddr, q); err != nil || n == 0 {
				t.Errorf("panel %q: %s: %d series, %v", p.Title, q, n, err)
			}
		}
	}

	var groups struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	if err := yamlUnmarshalFile(rules, &groups); err != nil {
		t.Fatal(err)
	}
	alerts := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts++
			if _, err := promQuery(t, promAddr, r.Expr); err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
			}
			for _, s := range signals(r.Expr) {
				if n, err := promSeries(t, promAddr, s); err != nil || n == 0 {
					t.Errorf("alert %s watches %s: %d series, %v", r.Alert, s, n, err)
				}
			}
		}
	}

	// Vault's series: in Vault mode only.
	for instance, want := range map[string]int{httpAddr: 0, vaultHTTP: 2} {
		if n, err := promQuery(t, promAddr, fmt.Sprintf(`{__name__=~"warden_vault_.*", instance=%q}`, instance)); err != nil || n != want {
			t.Errorf("warden_vault_* series of %s: %d, want %d (%v)", instance, n, want, err)
		}
	}

	// The root expires in 20 days: the 30-day alert fires.
	eventuallyCalls(t, func() error {
		resp, err := http.Get("http://" + promAddr + "/api/v1/alerts")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Alerts []struct {
					Labels map[string]string
					State  string
				}
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return err
		}
		var seen []string
		for _, a := range r.Data.Alerts {
			if a.Labels["alertname"] == "WardenRootCertExpiringSoon" && a.State == "firing" {
				return nil
			}
			seen = append(seen, a.Labels["alertname"]+"="+a.State)
		}
		return fmt.Errorf("WardenRootCertExpiringSoon is not firing; alerts: %v", seen)
	})
	t.Logf("%d dashboard queries and %d alert rules evaluated", queries, alerts)
}

func yamlUnmarshalFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, v)
}
