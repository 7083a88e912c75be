package meshconfig_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
)

// TestInvalidEditKeepsPreviousVersion: an edit warden refuses (a regex
// RE2 does not compile, which the API server's schema lets through) keeps
// the object's previous version in effect and is reported as such; a new
// invalid object is left out; a valid edit replaces the kept version and
// clears the report.
func TestInvalidEditKeepsPreviousVersion(t *testing.T) {
	ctx := kubetest.Context(t)
	ns := apiserver.Namespace(t, "keep")
	w := &meshconfig.Watcher{Client: dynamic.NewForConfigOrDie(apiserver.Config)}
	go func() { _ = w.Run(ctx) }()
	select {
	case <-w.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("informers did not sync")
	}
	vs := func(name, regex string) []byte {
		return []byte(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec:
  hosts: [api]
  http: [{match: [{uri: {regex: '` + regex + `'}}], route: [{destination: {host: api}}]}]
`)
	}
	apply := func(doc []byte) {
		t.Helper()
		if out, err := apiserver.Kubectl(t, doc, "apply", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
	}
	// The API server has no namespace controller: the objects go with
	// the test, or the other tests' watchers see them.
	t.Cleanup(func() {
		_, _ = apiserver.Kubectl(t, nil, "delete", "virtualservices", "--all", "-n", ns, "--wait")
	})
	// regexOf is the uri regex of VirtualService name in effect ("" when
	// none is), and whether the watcher reports it rejected.
	regexOf := func(name string) (string, string) {
		got := ""
		for _, o := range w.List() {
			if v, ok := o.(*api.VirtualService); ok && v.Metadata.Namespace == ns && v.Metadata.Name == name {
				got = v.Spec.HTTP[0].Match[0].URI.Regex
			}
		}
		for _, r := range w.Rejected() {
			if strings.HasPrefix(r, "VirtualService/"+ns+"/"+name+": ") {
				return got, r
			}
		}
		return got, ""
	}
	wait := func(what string, ok func() error) {
		t.Helper()
		kubetest.Eventually(t, 30*time.Second, ok)
	}

	apply(vs("routes", "/api/v[0-9]+"))
	wait("valid", func() error {
		if got, rej := regexOf("routes"); got != "/api/v[0-9]+" || rej != "" {
			return fmt.Errorf("in effect %q, rejected %q", got, rej)
		}
		return nil
	})
	apply(vs("routes", "/api/(v1"))
	wait("invalid edit", func() error {
		got, rej := regexOf("routes")
		if rej == "" {
			return fmt.Errorf("the invalid edit is not reported yet (in effect %q)", got)
		}
		if got != "/api/v[0-9]+" || !strings.Contains(rej, "is not an RE2 regular expression") || !strings.HasSuffix(rej, "(the previous version stays in effect)") {
			return fmt.Errorf("in effect %q, rejected %q", got, rej)
		}
		return nil
	})
	apply(vs("fresh", "(("))
	wait("invalid new object", func() error {
		if got, rej := regexOf("fresh"); got != "" || rej == "" || strings.Contains(rej, "previous version") {
			return fmt.Errorf("in effect %q, rejected %q", got, rej)
		}
		return nil
	})
	apply(vs("routes", "/api/v2"))
	wait("valid edit", func() error {
		if got, rej := regexOf("routes"); got != "/api/v2" || rej != "" {
			return fmt.Errorf("in effect %q, rejected %q", got, rej)
		}
		return nil
	})
}
