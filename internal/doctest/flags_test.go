package doctest_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/app"
)

// flagDefaults runs `warden <cmd> -h` and returns its flags with their
// defaults as the binary prints them ("" when it prints none).
func flagDefaults(t *testing.T, cmd string) map[string]string {
	t.Helper()
	var out bytes.Buffer
	if code := app.Run(context.Background(), append(strings.Fields(cmd), "-h"), &out, &out); code != 0 {
		t.Fatalf("warden %s -h: exit %d\n%s", cmd, code, out.String())
	}
	if !strings.HasPrefix(out.String(), "Usage: warden "+cmd) {
		t.Fatalf("warden %s -h printed no usage:\n%s", cmd, out.String())
	}
	flags := map[string]string{}
	name := ""
	def := regexp.MustCompile(`\(default "?(.*?)"?\)$`)
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "  -"):
			name = strings.Fields(line)[0][1:]
			flags[name] = ""
		case name != "" && strings.HasPrefix(line, "    \t"):
			if m := def.FindStringSubmatch(line); m != nil {
				flags[name] = m[1]
			}
		}
	}
	return flags
}

// docRow is one documented flag: where, and the default the docs give
// when it is one literal.
type docRow struct {
	where, def string
	literal    bool
}

// flagTables reads the tables of docs/*.md marked "<!-- flags: cmd -->"
// (on the line before the table; "<!-- flags: cmd1, cmd2 -->" for a
// table of flags several commands share) and returns the flags they
// document: the first code span of each row's first cell, --name or
// -name (a one-letter flag), and the others of that cell ("`--a`, `--b`").
func flagTables(t *testing.T, cmd string) map[string]docRow {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	code := regexp.MustCompile("`([^`]*)`")
	out := map[string]docRow{}
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			list, ok := strings.CutPrefix(strings.TrimSpace(l), "<!-- flags: ")
			list, ok2 := strings.CutSuffix(list, " -->")
			if !ok || !ok2 || !slices.Contains(strings.Split(list, ", "), cmd) {
				continue
			}
			header := splitRow(lines[i+1])
			defCol := slices.Index(header, "default")
			for j := i + 3; j < len(lines) && strings.HasPrefix(lines[j], "|"); j++ {
				cells := splitRow(lines[j])
				var names []string
				for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
					f := strings.Fields(m[1])[0]
					n, ok := strings.CutPrefix(f, "--")
					if !ok && len(f) == 2 {
						n, ok = strings.CutPrefix(f, "-")
					}
					if ok && !strings.HasSuffix(n, "*") {
						names = append(names, n)
					}
				}
				row := docRow{where: filepath.Base(doc) + ":" + strconv.Itoa(j+1)}
				if defCol >= 0 && defCol < len(cells) && len(names) == 1 {
					c := strings.TrimSpace(cells[defCol])
					if m := code.FindStringSubmatch(c); m != nil && m[0] == c {
						row.def, row.literal = m[1], true
					} else if c == "" || c == "off" || c == "on" || c == "true" || c == "false" || regexp.MustCompile(`^[0-9.]+$`).MatchString(c) {
						row.def, row.literal = c, true
					}
				}
				for _, n := range names {
					out[n] = row
				}
			}
		}
	}
	return out
}

func splitRow(l string) []string {
	l = strings.Trim(strings.TrimSpace(l), "|")
	var cells []string
	for _, c := range strings.Split(l, "|") {
		cells = append(cells, strings.TrimSpace(c))
	}
	return cells
}

// sameDefault compares a documented default with the binary's.
func sameDefault(doc, bin string) bool {
	switch doc {
	case "off", "false":
		return bin == "" || bin == "false"
	case "on", "true":
		return bin == "true"
	case "0": // -h leaves a zero default out
		return bin == "" || bin == "0"
	}
	if d1, err := time.ParseDuration(doc); err == nil {
		d2, err := time.ParseDuration(bin)
		return err == nil && d1 == d2
	}
	return doc == bin
}

// TestFlagsDocumented: for every command 'warden help' lists, every
// flag is in a flags table of docs/ marked for the command, every flag a
// table names exists, and a default the table gives as one literal is
// the binary's. Tables are hand-written prose; this keeps them and
// --help from drifting apart. A command without flags (version, cert
// inspect) needs no table.
func TestFlagsDocumented(t *testing.T) {
	for _, v := range []string{"KUBERNETES_SERVICE_HOST", "WARDEN_DATA_DIR", "WARDEN_ADDR", "WARDEN_HTTP_ADDR", "WARDEN_ROOT_CERT"} {
		t.Setenv(v, "")
	}
	for _, cmd := range app.CommandNames() {
		bin, docs := flagDefaults(t, cmd), flagTables(t, cmd)
		if len(docs) == 0 && len(bin) > 0 {
			t.Errorf("no docs table is marked <!-- flags: %s -->", cmd)
			continue
		}
		for name := range bin {
			if _, ok := docs[name]; !ok {
				t.Errorf("warden %s --%s is in no flags table of docs/ (<!-- flags: %s -->)", cmd, name, cmd)
			}
		}
		for name, row := range docs {
			def, ok := bin[name]
			switch {
			case !ok:
				t.Errorf("%s documents warden %s --%s, which does not exist", row.where, cmd, name)
			case row.literal && !sameDefault(row.def, def):
				t.Errorf("%s gives warden %s --%s the default %q; the binary's is %q", row.where, cmd, name, row.def, def)
			}
		}
	}
}

// TestFlagsConsistentAcrossCommands: a flag name that several commands
// take has one default on all of them (--data-dir, --ca, --root-cert,
// --key-type, --trust-domain...), unless it names a different thing on
// each, listed here with what it names.
func TestFlagsConsistentAcrossCommands(t *testing.T) {
	for _, v := range []string{"KUBERNETES_SERVICE_HOST", "WARDEN_DATA_DIR", "WARDEN_ADDR", "WARDEN_HTTP_ADDR", "WARDEN_ROOT_CERT", "POD_NAMESPACE"} {
		t.Setenv(v, "")
	}
	differs := map[string]string{
		"namespace":  "the install's namespace (serve, check, ca rotate), the workload's (policy commands) or the service account's (token)",
		"services":   "bench xds's number of services; the policy commands' Services selecting the workload",
		"o":          "check prints for people unless -o json; policy compile and proxy-config print YAML unless -o json",
		"ttl":        "token's lifetime; the certificate lifetime cert request and agent ask for (0: the CA's default)",
		"listen":     "serve's CA port; demo server's own address",
		"token-file": "the agent's projected token in a pod; cert request's, given or --renew",
	}
	defaults := map[string]map[string][]string{} // flag -> default -> commands
	for _, cmd := range app.CommandNames() {
		for name, def := range flagDefaults(t, cmd) {
			if defaults[name] == nil {
				defaults[name] = map[string][]string{}
			}
			defaults[name][def] = append(defaults[name][def], cmd)
		}
	}
	for name, byDef := range defaults {
		if len(byDef) > 1 && differs[name] == "" {
			t.Errorf("--%s has several defaults: %v", name, byDef)
		}
	}
	for name := range differs {
		if len(defaults[name]) < 2 {
			t.Errorf("--%s has one default now: remove it from the exceptions", name)
		}
	}
}

// TestBenchXDSProfileErrorNamesItsFlag: a CPU profile that cannot be
// written is reported under the flag's own name, --cpuprofile (the
// message once said --cpu-profile, a flag that does not exist). The real
// binary: bench xds runs its simulated proxies as a child process of it.
func TestBenchXDSProfileErrorNamesItsFlag(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Fatalf("this test writes to /dev/full: %v", err)
	}
	bin := build(t, t.TempDir())
	cmd := exec.Command(bin, "bench", "xds", "--proxies", "1", "--services", "1", "--cpuprofile", "/dev/full")
	out, err := cmd.CombinedOutput()
	if want := "warden bench xds: --cpuprofile /dev/full: write /dev/full: no space left on device"; err == nil || !strings.Contains(string(out), want) {
		t.Errorf("bench xds --cpuprofile /dev/full: %v, want exit 1 and %q:\n%s", err, want, out)
	}
}
