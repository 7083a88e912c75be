package bench

import (
	"context"
	"fmt"
	"io"
	"time"
)

// AttackResult compares honest callers' service before, during and after
// a hostile load.
type AttackResult struct {
	Before, During, After CAResult
	Hostile               HostileReport
	// Idle is the server's heap and RSS before any load; Settled after
	// the hostile clients left and the honest load went on.
	Idle, Settled ServerSample
}

// CAUnderAttack measures honest CreateCertificate load (cfg, whose
// Metrics must be set) three times: alone, beside the hostile clients of
// hcfg (started settle before measuring, so that they are all connected),
// and after those clients left.
func CAUnderAttack(ctx context.Context, cfg CAConfig, hcfg HostileConfig, settle time.Duration, progress io.Writer) (AttackResult, error) {
	var r AttackResult
	if cfg.Metrics == "" {
		return r, fmt.Errorf("bench: the hostile mode needs the server's metrics URL")
	}
	var err error
	if r.Idle, err = Scrape(ctx, cfg.Metrics); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, "honest load alone...")
	if r.Before, err = CA(ctx, cfg); err != nil {
		return r, err
	}
	fmt.Fprintln(progress, "starting the hostile clients...")
	h := StartHostile(ctx, hcfg)
	sleep(ctx, settle)
	fmt.Fprintln(progress, "honest load beside them...")
	r.During, err = CA(ctx, cfg)
	r.Hostile = h.Stop()
	if err != nil {
		return r, err
	}
	fmt.Fprintln(progress, "hostile clients gone; honest load again...")
	sleep(ctx, settle)
	if r.After, err = CA(ctx, cfg); err != nil {
		return r, err
	}
	r.Settled = r.After.ServerEnd
	return r, ctx.Err()
}

// Print writes the comparison for people.
func (r AttackResult) Print(w io.Writer) {
	fmt.Fprintf(w, "honest CreateCertificate load (%d callers), before / beside / after hostile clients:\n", r.Before.Config.Concurrency)
	fmt.Fprintf(w, "%-8s %9s %7s %10s %10s %14s %12s %12s %12s\n", "", "certs/s", "errors", "p50", "p99", "server µs/cert", "peak heap", "peak RSS", "bench cores")
	for _, row := range []struct {
		name string
		res  CAResult
	}{{"before", r.Before}, {"during", r.During}, {"after", r.After}} {
		x := row.res
		fmt.Fprintf(w, "%-8s %9.0f %7d %10s %10s %14.0f %12s %12s %12.2f\n", row.name, x.PerSecond(), x.Errors,
			x.P50.Round(time.Microsecond), x.P99.Round(time.Microsecond),
			float64(x.ServerCPU.Microseconds())/float64(max(x.Certs, 1)), MiB(x.ServerPeak.HeapInuse), MiB(x.ServerPeak.RSS),
			x.ClientCPU.Seconds()/x.Elapsed.Seconds())
	}
	fmt.Fprintf(w, "hostile: %s\n", r.Hostile)
	fmt.Fprintf(w, "server heap in use: %s idle, %s at the peak, %s after the hostile clients left\n",
		MiB(r.Idle.HeapInuse), MiB(r.During.ServerPeak.HeapInuse), MiB(r.Settled.HeapInuse))
	fmt.Fprintf(w, "server RSS: %s idle, %s at the peak, %s after\n", MiB(r.Idle.RSS), MiB(r.During.ServerPeak.RSS), MiB(r.Settled.RSS))
	fmt.Fprintf(w, "(bench cores: this process, honest and hostile clients together, on the same machine as the server)\n")
	if e := r.During.FirstErr; e != nil {
		fmt.Fprintf(w, "first honest error under attack: %v\n", e)
	}
}
