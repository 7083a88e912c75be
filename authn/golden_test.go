package authn_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// compileCase runs one testdata case: the first line of <case>-in.yaml is
// `# workload: {json}`; an optional second line `# registry: [{json}]`
// lists the services (xds.Service) jwksUri hosts resolve against, as
// warden serve's registry; the rest are policy objects. The result is the
// rendered YAML, or "error: <message>".
func compileCase(t testing.TB, in []byte) []byte {
	first, rest, _ := bytes.Cut(in, []byte("\n"))
	wl, ok := bytes.CutPrefix(first, []byte("# workload: "))
	if !ok {
		t.Fatal("first line must be # workload: {json}")
	}
	var w authn.Workload
	if err := json.Unmarshal(wl, &w); err != nil {
		t.Fatal(err)
	}
	var opts authn.Options
	second, after, _ := bytes.Cut(rest, []byte("\n"))
	if reg, ok := bytes.CutPrefix(second, []byte("# registry: ")); ok {
		var services []*xds.Service
		if err := json.Unmarshal(reg, &services); err != nil {
			t.Fatal(err)
		}
		opts.Hosts, rest = xds.NewHostIndex(services, ""), after
	}
	objs, err := api.Decode(rest)
	if err != nil {
		return []byte("error: " + err.Error() + "\n")
	}
	ix, err := authn.NewIndex(objs, opts)
	if err != nil {
		return []byte("error: " + err.Error() + "\n")
	}
	out, err := ix.Compile(w)
	if err != nil {
		return []byte("error: " + err.Error() + "\n")
	}
	y, err := out.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/*-in.yaml")
	if len(ins) < 25 {
		t.Fatalf("%d golden cases, want at least 25", len(ins))
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), "-in.yaml")
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got := compileCase(t, b)
			testkit.Golden(t, strings.TrimSuffix(in, "-in.yaml")+"-out.yaml", got, "./authn")
		})
	}
}

// FuzzCompile: decoding and compiling any input never panics.
func FuzzCompile(f *testing.F) {
	ins, _ := filepath.Glob("testdata/*-in.yaml")
	for _, in := range ins {
		b, _ := os.ReadFile(in)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := api.Decode(data)
		if err != nil {
			return
		}
		ix, err := authn.NewIndex(objs, authn.Options{})
		if err != nil {
			return
		}
		for _, w := range []authn.Workload{
			{Namespace: "default", Labels: map[string]string{"app": "flaskapp"}, Ports: []authn.Port{{Number: 8080, Name: "http"}, {Number: 9090}}, ServiceNames: []string{"flaskapp"}},
			{Namespace: "istio-system"},
		} {
			if out, err := ix.Compile(w); err == nil {
				if _, err := out.YAML(); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
