package app

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
)

// readObjects decodes a YAML file, or every *.yaml/*.yml/*.json file in a
// directory (sorted), naming the file in errors.
func readObjects(path string) ([]api.Object, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files := []string{path}
	if fi.IsDir() {
		files = nil
		for _, pat := range []string{"*.yaml", "*.yml", "*.json"} {
			m, _ := filepath.Glob(filepath.Join(path, pat))
			files = append(files, m...)
		}
		sort.Strings(files)
	}
	var out []api.Object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		objs, err := api.Decode(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, objs...)
	}
	return out, nil
}

// parseLabels parses k=v,k2=v2.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range splitList(s) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: label %q is not key=value", errUsage, kv)
		}
		out[k] = v
	}
	return out, nil
}

// parsePorts parses 8080,9090 or http:8080.
func parsePorts(s string) ([]authn.Port, error) {
	var out []authn.Port
	for _, p := range splitList(s) {
		name, num, ok := strings.Cut(p, ":")
		if !ok {
			name, num = "", p
		}
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: port %q is not [name:]number", errUsage, p)
		}
		out = append(out, authn.Port{Number: uint32(n), Name: name})
	}
	return out, nil
}

type workloadFlags struct {
	file, ns, labels, ports, services, output, rootNS, kind string
}

func (e *env) policyFlags(name string, w *workloadFlags) *flag.FlagSet {
	fs := e.flags(name)
	fs.StringVar(&w.file, "f", "", "policy YAML file or directory (required)")
	fs.StringVar(&w.ns, "namespace", "default", "workload namespace")
	fs.StringVar(&w.labels, "labels", "", "workload labels k=v,k2=v2")
	fs.StringVar(&w.ports, "port", "8080", "workload ports, comma-separated, each [name:]number")
	fs.StringVar(&w.services, "services", "", "Services selecting the workload (legacy Policy targets)")
	fs.StringVar(&w.rootNS, "root-namespace", "istio-system", "mesh root namespace")
	return fs
}

func (w *workloadFlags) workload() (authn.Workload, error) {
	labels, err := parseLabels(w.labels)
	if err != nil {
		return authn.Workload{}, err
	}
	ports, err := parsePorts(w.ports)
	if err != nil {
		return authn.Workload{}, err
	}
	return authn.Workload{Namespace: w.ns, Labels: labels, Ports: ports, Services: splitList(w.services)}, nil
}

func runPolicyCompile(_ context.Context, e *env, args []string) error {
	var w workloadFlags
	fs := e.policyFlags("policy compile", &w)
	fs.StringVar(&w.kind, "kind", "authn", "what to compile: authn")
	fs.StringVar(&w.output, "o", "yaml", "output format: yaml or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if w.file == "" {
		return fmt.Errorf("%w: -f is required", errUsage)
	}
	if w.kind != "authn" {
		return fmt.Errorf("%w: --kind %q: only authn is available in this version", errUsage, w.kind)
	}
	wl, err := w.workload()
	if err != nil {
		return err
	}
	objs, err := readObjects(w.file)
	if err != nil {
		return err
	}
	ix, err := authn.NewIndex(objs, authn.Options{RootNamespace: w.rootNS})
	if err != nil {
		return err
	}
	out, err := ix.Compile(wl)
	if err != nil {
		return err
	}
	var b []byte
	switch w.output {
	case "yaml":
		b, err = out.YAML()
	case "json":
		b, err = out.JSON()
	default:
		return fmt.Errorf("%w: -o %q: want yaml or json", errUsage, w.output)
	}
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(b)
	return err
}

// runPolicyCheck validates objects and prints the effective mode per port
// and any conflicts for the workload.
func runPolicyCheck(_ context.Context, e *env, args []string) error {
	var w workloadFlags
	fs := e.policyFlags("policy check", &w)
	if err := parse(fs, args); err != nil {
		return err
	}
	if w.file == "" {
		return fmt.Errorf("%w: -f is required", errUsage)
	}
	wl, err := w.workload()
	if err != nil {
		return err
	}
	objs, err := readObjects(w.file)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d objects valid\n", len(objs))
	ix, err := authn.NewIndex(objs, authn.Options{RootNamespace: w.rootNS})
	if err != nil {
		return err
	}
	s, err := ix.Effective(wl)
	if err != nil {
		return err
	}
	for _, p := range s.Ports {
		fmt.Fprintf(e.stdout, "port %d: %s (%s)\n", p.Port, p.Mode, p.Source)
	}
	for _, j := range s.JWT {
		fmt.Fprintf(e.stdout, "jwt issuer %s (%s)\n", j.Issuer, j.Source)
	}
	for _, c := range s.Conflicts {
		fmt.Fprintf(e.stdout, "conflict: %s\n", c)
	}
	return nil
}
