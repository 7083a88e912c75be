package doctest_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
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
	if len(flags) == 0 {
		t.Fatalf("warden %s -h printed no flags:\n%s", cmd, out.String())
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
// (on the line before the table) and returns the flags they document.
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
			if strings.TrimSpace(l) != "<!-- flags: "+cmd+" -->" {
				continue
			}
			header := splitRow(lines[i+1])
			defCol := slices.Index(header, "default")
			for j := i + 3; j < len(lines) && strings.HasPrefix(lines[j], "|"); j++ {
				cells := splitRow(lines[j])
				var names []string
				for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
					n, ok := strings.CutPrefix(strings.Fields(m[1])[0], "--")
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
	}
	if d1, err := time.ParseDuration(doc); err == nil {
		d2, err := time.ParseDuration(bin)
		return err == nil && d1 == d2
	}
	return doc == bin
}

// TestFlagsDocumented: every flag of serve and agent is in a flags table
// of docs/ marked for the command, every flag a table names exists, and a
// default the table gives as one literal is the binary's. Tables are
// hand-written prose; this keeps them and --help from drifting apart.
func TestFlagsDocumented(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("WARDEN_DATA_DIR", "")
	for _, cmd := range []string{"serve", "agent"} {
		bin, docs := flagDefaults(t, cmd), flagTables(t, cmd)
		if len(docs) == 0 {
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
