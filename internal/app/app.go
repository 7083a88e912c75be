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
	// synopsis is what follows "warden <name>" in -h's usage line, one
	// line per form (default "[flags]"): the positional arguments, and
	// the flags the command cannot run without.
	synopsis string
	// help says more about the arguments in -h: steps, output types.
	help string
	run  func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{name: "serve", summary: "run the control plane: CA API, SDS and xDS on :15012 (standalone, or with --kubernetes in a cluster)", run: runServe},
		{name: "agent", summary: "node agent: get and rotate workload certificates, serve them over SDS and the Workload API", run: runAgent},
		{name: "token", summary: "mint a workload token (standalone mode)", synopsis: "--namespace NS --sa SA [flags]",
			help: "Prints a token for the service account NS/SA, signed with the data directory's token key, for 'warden cert request --token-file' and 'warden agent --token-file'.", run: runToken},
		{name: "ca info", summary: "show the CA's root, expiry and chain", synopsis: "[--data-dir DIR | --plugged-in-dir DIR]", run: runCAInfo},
		{name: "ca rotate", summary: "rotate the self-signed root of a running serve: prepare, publish, activate, retire (abort, --status)",
			synopsis: "[flags] prepare|publish|activate|retire|abort\n--status [flags]", help: caRotateHelp, run: runCARotate},
		{name: "cert request", summary: "get a workload certificate from the CA", synopsis: "[flags] --token-file FILE --out DIR\n[flags] --renew --out DIR",
			help: "Generates a key (--key-type), sends a CSR to the CA at --ca, and writes DIR/cert-chain.pem, DIR/key.pem (0600) and DIR/root-cert.pem.", run: runCertRequest},
		{name: "cert inspect", summary: "show the SPIFFE ID, validity and issuer of certificates in a PEM file", synopsis: "FILE",
			help: "FILE is a PEM file of certificates (a cert-chain.pem, a root-cert.pem); for each, in order: SPIFFE ID, subject, issuer, serial, validity, key, whether it is a CA, DNS names, SHA-256 fingerprint.", run: runCertInspect},
		{name: "bench ca", summary: "load-test the CA API: certs/s and latency", run: runBenchCA},
		{name: "bench sds", summary: "fan out SDS streams: heap per stream, root push latency", run: runBenchSDS},
		{name: "bench sds-clients", run: runBenchSDSClients},
		{name: "policy compile", summary: "compile mesh policy for a workload into Envoy configuration", synopsis: "-f FILE|DIR [flags]",
			help: "Prints the Envoy configuration (-o yaml or json) the policies in FILE or DIR give the workload of --namespace, --labels and --port: --kind authn, its inbound TLS filter chains and jwt_authn; --kind authz, its RBAC filters (--tcp: the network filter).", run: runPolicyCompile},
		{name: "policy explain", summary: "ALLOW or DENY for a request, and which policy decided", synopsis: "-f FILE|DIR [flags]",
			help: "Describe the workload (--namespace, --labels, --port; or --node) and the request (--source-principal, --method, --path, --header, --jwt); prints ALLOW or DENY, the policy that decided, and what was evaluated.", run: runPolicyExplain},
		{name: "policy migrate", summary: "convert ServiceRole/ServiceRoleBinding into AuthorizationPolicies", synopsis: "-f FILE|DIR [--service-labels FQDN=k=v,k2=v2]...",
			help: "Prints the AuthorizationPolicies (YAML) that the ServiceRoles, ServiceRoleBindings and ClusterRbacConfig in FILE or DIR mean, and what could not be converted.", run: runPolicyMigrate},
		{name: "policy check", summary: "validate policy objects; show a workload's effective mode and conflicts", synopsis: "-f FILE|DIR [flags]", run: runPolicyCheck},
		{name: "demo server", summary: "proxyless gRPC demo workload configured over xDS: answers with its version", synopsis: "--node ID --certs DIR --listen ADDR [flags]", run: runDemoServer},
		{name: "demo client", summary: "proxyless gRPC demo client: calls a service through warden's routing", synopsis: "--node ID --certs DIR [flags]", run: runDemoClient},
		{name: "proxy-config", summary: "show the listeners, routes, clusters, endpoints or secrets warden sends a proxy",
			synopsis: "--node ID --config-dir DIR [flags] " + proxyConfigTypes + "\n--node ID --kubernetes [flags] " + proxyConfigTypes, help: proxyConfigHelp, run: runProxyConfig},
		{name: "bench xds", summary: "connect simulated proxies over ADS: push latency and heap per proxy", run: runBenchXDS},
		{name: "bench xds-clients", run: runBenchXDSClients},
		{name: "check", summary: "check the CA, the trust bundle's copies, the proxies and the mesh configuration; non-zero exit on any error", run: runCheck},
		{name: "version", summary: "print the version", help: "The same as 'warden --version'.", run: runVersion},
	}
}

const caRotateHelp = `Steps, in order (naming one runs those before it; the server takes each
once its wait is over):
  prepare   make a new root and key beside the old root, which still signs
  publish   add the new root to the trust bundle every consumer gets
  activate  sign with the new root, once every consumer has the bundle and
            --rotation-grace after publish
  retire    drop the old root, once the last leaf it signed has expired
  abort     drop a rotation that has not activated
--status shows the phase, who lacks the new root, and what the next step
waits for.`

// proxyConfigTypes are proxy-config's arguments.
const proxyConfigTypes = "listeners|routes|clusters|endpoints|secrets|all"

const proxyConfigHelp = `What to show, as the proxy of --node receives it:
  listeners  inbound and outbound listeners: filter chains, TLS, policy filters
  routes     route configurations: virtual hosts and routes
  clusters   clusters: subsets, load balancing, TLS to the upstream
  endpoints  each cluster's endpoints
  secrets    the SDS secrets the proxy is sent, described (never their keys)
  all        all of the above`

// CommandNames lists the commands 'warden help' lists, in its order (the
// docs tests check each one's flags against docs/).
func CommandNames() []string {
	var out []string
	for _, c := range commands() {
		if c.summary != "" {
			out = append(out, c.name)
		}
	}
	return out
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

// flags makes a FlagSet that reports errors instead of exiting, and
// whose -h prints the command's usage (printUsage).
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("warden "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	for _, c := range commands() {
		if c.name == name {
			fs.Usage = func() { printUsage(fs, c) }
		}
	}
	return fs
}

// printUsage is -h of a command: its synopsis (every form), what it does,
// more about its arguments, then its flags.
func printUsage(fs *flag.FlagSet, c command) {
	w := fs.Output()
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	synopsis := c.synopsis
	if synopsis == "" && n > 0 {
		synopsis = "[flags]"
	}
	for i, form := range strings.Split(synopsis, "\n") {
		lead := "Usage: "
		if i > 0 {
			lead = strings.Repeat(" ", len(lead))
		}
		fmt.Fprintln(w, strings.TrimRight(lead+fs.Name()+" "+form, " "))
	}
	if c.summary != "" {
		fmt.Fprintf(w, "\n%s\n", c.summary)
	}
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", wrap(c.help, 72))
	}
	if n > 0 {
		fmt.Fprintln(w, "\nFlags:")
		fs.PrintDefaults()
	}
}

// wrap breaks the lines of text longer than width at spaces; indented
// lines (a list laid out by hand) are left as they are.
func wrap(text string, width int) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, " ") {
			out = append(out, line)
			continue
		}
		cur := ""
		for _, word := range strings.Fields(line) {
			if cur != "" && len(cur)+1+len(word) > width {
				out = append(out, cur)
				cur = ""
			}
			if cur != "" {
				cur += " "
			}
			cur += word
		}
		out = append(out, cur)
	}
	return strings.Join(out, "\n")
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
		fs.Usage()
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
