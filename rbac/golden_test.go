package rbac_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/rbac"
)

func compileCase(t testing.TB, in []byte, tcp bool) []byte {
	first, rest, _ := bytes.Cut(in, []byte("\n"))
	wl, ok := bytes.CutPrefix(first, []byte("# workload: "))
	if !ok {
		t.Fatal("first line must be # workload: {json}")
	}
	var w rbac.Workload
	if err := json.Unmarshal(wl, &w); err != nil {
		t.Fatal(err)
	}
	objs, err := api.Decode(rest)
	if err != nil {
		return []byte("error: " + err.Error() + "\n")
	}
	out, err := rbac.Compile(objs, w, rbac.Options{TCP: tcp})
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
	n := 0
	for _, kind := range []string{"http", "tcp"} {
		ins, _ := filepath.Glob(filepath.Join("testdata", kind, "*-in.yaml"))
		n += len(ins)
		for _, in := range ins {
			name := kind + "/" + strings.TrimSuffix(filepath.Base(in), "-in.yaml")
			t.Run(name, func(t *testing.T) {
				b, err := os.ReadFile(in)
				if err != nil {
					t.Fatal(err)
				}
				got := compileCase(t, b, kind == "tcp")
				testkit.Golden(t, strings.TrimSuffix(in, "-in.yaml")+"-out.yaml", got, "./rbac")
			})
		}
	}
	if n < 40 {
		t.Fatalf("%d golden cases, want at least 40", n)
	}
}
