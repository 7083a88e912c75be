// Package app is warden's command line: flag parsing, wiring of the
// libraries, and the run group of servers. cmd/warden only calls Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardenmesh/warden/ca"
)

// Version is set at build time with -ldflags "-X ...app.Version=...".
var Version = "dev"

// errUsage marks a command-line mistake (exit code 2).
var errUsage = errors.New("usage")

// errDenied is policy explain --exit-code's DENY (exit code 3): the
// command worked, and its answer is no.
var errDenied = errors.New("denied")

// env is the process environment, read through a function so tests can
// pass their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

type command struct {
	name    string
	summary string // empty: not listed (internal helpers)
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the control plane: CA API, SDS and xDS on :15012 (standalone, or with --kubernetes in a cluster)", runServe},
		{"agent", "node agent: get and rotate workload certificates, serve them over SDS and the Workload API", runAgent},
		{"token", "mint a workload token (standalone mode)", runToken},
		{"ca info", "show the CA's root, expiry and chain", runCAInfo},
		{"ca rotate", "rotate the self-signed root of a running serve: prepare, publish, activate, retire (abort, --status)", runCARotate},
		{"cert request", "get a workload certificate from the CA", runCertRequest},
		{"cert inspect", "show the SPIFFE ID, validity and issuer of certificates in a PEM file", runCertInspect},
		{"bench ca", "load-test the CA API: certs/s and latency", runBenchCA},
		{"bench sds", "fan out SDS streams: heap per stream, root push latency", runBenchSDS},
		{"bench sds-clients", "", runBenchSDSClients},
		{"policy compile", "compile mesh policy for a workload into Envoy configuration", runPolicyCompile},
		{"policy explain", "ALLOW or DENY for a request, and which policy decided", runPolicyExplain},
		{"policy migrate", "convert ServiceRole/ServiceRoleBinding into AuthorizationPolicies", runPolicyMigrate},
		{"policy check", "validate policy objects; show a workload's effective mode and conflicts", runPolicyCheck},
		{"demo server", "proxyless gRPC demo workload configured over xDS: answers with its version", runDemoServer},
		{"demo client", "proxyless gRPC demo client: calls a service through warden's routing", runDemoClient},
		{"proxy-config", "show the listeners, routes, clusters, endpoints or secrets warden sends a proxy", runProxyConfig},
		{"bench xds", "connect simulated proxies over ADS: push latency and heap per proxy", runBenchXDS},
		{"bench xds-clients", "", runBenchXDSClients},
		{"check", "check the CA, the trust bundle's copies, the proxies and the mesh configuration; non-zero exit on any error", runCheck},
		{"version", "print the version", runVersion},
	}
}

// Run executes the command line args (without the program name) and returns
// the process exit code: 0 success, 1 failure, 2 usage error (3: policy
// explain --exit-code's DENY).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	return e.run(ctx, args)
}

func (e *env) run(ctx context.Context, args []string) int {
	for _, c := range commands() {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			out := &outWriter{w: e.stdout}
			ce := *e
			ce.stdout = out
			err := c.run(ctx, &ce, args[len(words):])
			if err == nil && out.err != nil {
				// The work is lost (a token on a full disk, a closed
				// pipe): the command failed.
				err = fmt.Errorf("writing the output: %w", out.err)
			}
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errDenied):
				return 3
			case errors.Is(err, errUsage):
				fmt.Fprintf(e.stderr, "warden %s: %v\n", c.name, err)
				return 2
			default:
				fmt.Fprintf(e.stderr, "warden %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		return e.run(ctx, []string{"version"})
	}
	if len(args) > 0 && args[0] != "help" && args[0] != "-h" && args[0] != "--help" {
		fmt.Fprintf(e.stderr, "warden: unknown command %q\n\n", strings.Join(args, " "))
		e.usage()
		return 2
	}
	e.usage()
	return 0
}

// outWriter is a command's standard output that remembers the first
// write that failed: a command whose output did not reach its reader
// exits non-zero, however it wrote.
type outWriter struct {
	w   io.Writer
	err error
}

func (o *outWriter) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		o.err = err
	}
	return n, err
}

func (e *env) usage() {
	fmt.Fprintln(e.stderr, "warden: certificate authority and mTLS authority for service meshes\n\nCommands:")
	for _, c := range commands() {
		if c.summary != "" {
			fmt.Fprintf(e.stderr, "  warden %-14s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintln(e.stderr, "\nRun 'warden <command> -h' for its flags.")
}

// flags makes a FlagSet that reports errors instead of exiting.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("warden "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// parse parses args, turning flag errors and stray arguments into errUsage.
// A mistake gets one line that names it (with the flag meant, when a
// known one is close, and a hint for a duration without its unit) and
// points at -h; the flags' usage is printed for -h only.
func parse(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(out, "Usage of %s:\n", fs.Name())
		fs.PrintDefaults()
		return err
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		if near := closestFlag(fs, strings.TrimLeft(name, "-")); near != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", near)
		}
	}
	if strings.Contains(msg, "invalid value") && strings.Contains(msg, "parse error") {
		var name string
		if _, after, ok := strings.Cut(msg, " for flag -"); ok {
			name, _, _ = strings.Cut(after, ":")
		}
		if f := fs.Lookup(name); f != nil {
			if _, derr := time.ParseDuration(f.DefValue); derr == nil {
				msg += " (a duration needs its unit: 90s, 10m, 24h)"
			}
		}
	}
	return fmt.Errorf("%w: %s; run '%s -h' for its flags", errUsage, msg, fs.Name())
}

// closestFlag is the defined flag nearest to name (at most two edits, or
// name a prefix of it), "" when none is.
func closestFlag(fs *flag.FlagSet, name string) string {
	best, bestD := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		d := editDistance(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// caAddr is where warden's CA port is (serve's --listen, every client's
// --ca): $WARDEN_ADDR, or 127.0.0.1:15012.
func (e *env) caAddr() string {
	if a := e.getenv("WARDEN_ADDR"); a != "" {
		return a
	}
	return defaultCAListen
}

// httpAddr is where warden's HTTP port is (serve's --http-listen):
// $WARDEN_HTTP_ADDR, or 127.0.0.1:15014.
func (e *env) httpAddr() string {
	if a := e.getenv("WARDEN_HTTP_ADDR"); a != "" {
		return a
	}
	return defaultHTTPListen
}

// dataDirDefault is the standalone data directory: $WARDEN_DATA_DIR or
// ./warden-data.
func (e *env) dataDirDefault() string {
	if d := e.getenv("WARDEN_DATA_DIR"); d != "" {
		return d
	}
	return "warden-data"
}

// podRootCert is where Istio's injector mounts the istio-ca-root-cert
// ConfigMap, the bundle warden publishes, in every pod.
const podRootCert = "/var/run/secrets/istio/root-cert.pem"

// rootCertDefault is --root-cert's default for cert request and agent:
// $WARDEN_ROOT_CERT; else dataDir's root-cert.pem (standalone) when it
// exists; else the pod's mounted bundle when that exists (Kubernetes);
// else dataDir's, whose absence is then reported with what to give.
func (e *env) rootCertDefault(dataDir string) string {
	if f := e.getenv("WARDEN_ROOT_CERT"); f != "" {
		return f
	}
	own := filepath.Join(dataDir, ca.FileRootCert)
	for _, f := range []string{own, podRootCert} {
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	return own
}

func (e *env) logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, level)
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l})), nil
}

func runVersion(_ context.Context, e *env, args []string) error {
	fs := e.flags("version")
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "warden", Version)
	return nil
}
