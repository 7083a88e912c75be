package fedrelations_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/kube/fedrelations"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// The tests share one real kube-apiserver and etcd (kubetest); the kind
// is cluster-scoped, so they do not run in parallel.
var apiserver kubetest.Server

func TestMain(m *testing.M) { kubetest.Main(m, &apiserver) }

var local = spiffeid.RequireTrustDomainFromString("cluster.local")

// sink records what the watcher hands on.
type sink struct {
	mu   sync.Mutex
	rels []*federation.Relationship
}

func (s *sink) set(rels []*federation.Relationship) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rels = rels
	return true, nil
}

// urls is trust domain -> endpoint URL of what is in effect.
func (s *sink) urls() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for _, r := range s.rels {
		out[r.TrustDomain.Name()] = r.URL
	}
	return out
}

func (s *sink) want(t *testing.T, want map[string]string) {
	t.Helper()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if got := s.urls(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("in effect %v, want %v", got, want)
		}
		return nil
	})
}

func web(t *testing.T, td, url string) *federation.Relationship {
	t.Helper()
	r, err := federation.ParseSpec([]byte(`{"trustDomain":"`+td+`","bundleEndpointURL":"`+url+`","bundleEndpointProfile":{"type":"https_web"},"namespaces":["*"]}`), local)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func create(t *testing.T, c dynamic.Interface, name, td, url string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": fedrelations.Group + "/" + fedrelations.Version, "kind": fedrelations.Kind,
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"trustDomain": td, "bundleEndpointURL": url, "bundleEndpointProfile": map[string]any{"type": "https_web"}, "namespaces": []any{"default"}},
	}}
	if _, err := c.Resource(fedrelations.GVR).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Resource(fedrelations.GVR).Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

func accepted(t *testing.T, c dynamic.Interface, name string) (string, string) {
	t.Helper()
	u, err := c.Resource(fedrelations.GVR).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range conds {
		if m, _ := x.(map[string]any); m["type"] == fedrelations.Accepted && fmt.Sprint(m["observedGeneration"]) == fmt.Sprint(u.GetGeneration()) {
			return fmt.Sprint(m["status"]), fmt.Sprint(m["message"])
		}
	}
	return "", ""
}

// TestWatcher: the objects join the file's relationships by name; one
// naming a trust domain the file or an earlier object names is refused
// by name and the others stay; a refused edit keeps the previous
// generation; a file edit that names an object's trust domain takes it
// over; a deletion drops the object; the leader's status says each.
func TestWatcher(t *testing.T) {
	c := dynamic.NewForConfigOrDie(apiserver.Config)
	s := &sink{}
	logs := &testkit.Buffer{}
	w := &fedrelations.Watcher{Client: c, Discovery: apiserver.Client.Discovery(), Local: local, Set: s.set, Log: slog.New(slog.NewTextHandler(logs, nil))}
	if _, err := w.SetFile([]*federation.Relationship{web(t, "file.test", "https://file/")}); err != nil {
		t.Fatal(err)
	}
	ctx := kubetest.Context(t)
	go func() { _ = w.Run(ctx) }()
	go w.WriteStatus(ctx, nil, time.Second)
	select {
	case <-w.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("not synced")
	}
	create(t, c, "b", "b.test", "https://b/")
	create(t, c, "c", "b.test", "https://c/")    // b.test: object b's, earlier by name
	create(t, c, "d", "file.test", "https://d/") // the file's
	s.want(t, map[string]string{"file.test": "https://file/", "b.test": "https://b/"})
	kubetest.Eventually(t, 20*time.Second, func() error {
		if st, msg := accepted(t, c, "c"); st != "False" || !strings.Contains(msg, "trustDomain b.test is already named by ClusterFederatedTrustDomain b") {
			return fmt.Errorf("c: %s %q", st, msg)
		}
		if st, msg := accepted(t, c, "d"); st != "False" || !strings.Contains(msg, "trustDomain file.test is already named by the federation file") {
			return fmt.Errorf("d: %s %q", st, msg)
		}
		if st, msg := accepted(t, c, "b"); st != "True" || msg != "in effect: b.test's bundle from https://b/ (https_web) for namespaces default" {
			return fmt.Errorf("b: %s %q", st, msg)
		}
		return nil
	})

	// An invalid edit of b: the previous generation stays, c stays out.
	u, err := c.Resource(fedrelations.GVR).Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unstructured.SetNestedField(u.Object, "https_sp1ffe", "spec", "bundleEndpointProfile", "type")
	if _, err := c.Resource(fedrelations.GVR).Update(ctx, u, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "Unsupported value") {
		t.Fatalf("the schema took an unknown profile: %v", err)
	}
	unstructured.SetNestedField(u.Object, "https_web", "spec", "bundleEndpointProfile", "type")
	unstructured.SetNestedField(u.Object, "https://user@b/", "spec", "bundleEndpointURL")
	if _, err := c.Resource(fedrelations.GVR).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		if st, msg := accepted(t, c, "b"); st != "False" || msg != `refused: bundleEndpointURL: "https://user@b/": a bundle endpoint URL carries no userinfo; generation 1 stays in effect (b.test's bundle from https://b/ (https_web) for namespaces default) until the spec is fixed` {
			return fmt.Errorf("b: %s %q", st, msg)
		}
		return nil
	})
	if got := s.urls(); got["b.test"] != "https://b/" {
		t.Fatalf("after b's invalid edit: %v", got)
	}
	// A replica started now never saw generation 1: it takes it from the
	// status (lastAccepted), as the running one keeps it, rather than
	// hand b.test to c.
	s2 := &sink{}
	w2 := &fedrelations.Watcher{Client: c, Discovery: apiserver.Client.Discovery(), Local: local, Set: s2.set}
	if _, err := w2.SetFile([]*federation.Relationship{web(t, "file.test", "https://file/")}); err != nil {
		t.Fatal(err)
	}
	ctx2, stop2 := context.WithCancel(ctx)
	go func() { _ = w2.Run(ctx2) }()
	s2.want(t, map[string]string{"file.test": "https://file/", "b.test": "https://b/"})
	stop2()

	// The file now names b.test: the file's wins, b is refused, c too.
	if _, err := w.SetFile([]*federation.Relationship{web(t, "file.test", "https://file/"), web(t, "b.test", "https://file-b/")}); err != nil {
		t.Fatal(err)
	}
	s.want(t, map[string]string{"file.test": "https://file/", "b.test": "https://file-b/"})

	// The file drops both: c is next in line for b.test (b is still
	// invalid, and its previous generation comes first by name).
	if _, err := w.SetFile(nil); err != nil {
		t.Fatal(err)
	}
	s.want(t, map[string]string{"b.test": "https://b/", "file.test": "https://d/"})
	if err := c.Resource(fedrelations.GVR).Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.want(t, map[string]string{"b.test": "https://c/", "file.test": "https://d/"})
	for _, want := range []string{
		`msg="federation: ClusterFederatedTrustDomain refused" name=c error="trustDomain b.test is already named by ClusterFederatedTrustDomain b`,
		`msg="federation: ClusterFederatedTrustDomain refused; its previous version stays in effect" name=b generation=2 inEffect=1`,
		`msg="federation: ClusterFederatedTrustDomain deleted" name=b`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
}

// TestWatcherKindNotServed: without the CRD, the watcher says so once and
// the file's relationships work alone; once the CRD is installed, it
// watches the objects.
func TestWatcherKindNotServed(t *testing.T) {
	crd := filepath.Join(kubetest.RepoRoot(), "deploy", "crds", "clusterfederatedtrustdomains.federation.wardenmesh.io.yaml")
	if out, err := apiserver.Kubectl(t, nil, "delete", "-f", crd, "--wait"); err != nil {
		t.Fatalf("kubectl delete the CRD: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, nil, "apply", "-f", crd) })
	disc := apiserver.Client.Discovery()
	kubetest.Eventually(t, 20*time.Second, func() error {
		if _, err := disc.ServerResourcesForGroupVersion(fedrelations.GVR.GroupVersion().String()); err == nil {
			return fmt.Errorf("still served")
		}
		return nil
	})
	c := dynamic.NewForConfigOrDie(apiserver.Config)
	s := &sink{}
	logs := &testkit.Buffer{}
	w := &fedrelations.Watcher{Client: c, Discovery: disc, Local: local, Set: s.set, Log: slog.New(slog.NewTextHandler(logs, nil)), Recheck: 200 * time.Millisecond}
	if _, err := w.SetFile([]*federation.Relationship{web(t, "file.test", "https://file/")}); err != nil {
		t.Fatal(err)
	}
	ctx := kubetest.Context(t)
	go func() { _ = w.Run(ctx) }()
	time.Sleep(time.Second) // several rechecks
	if n := strings.Count(logs.String(), "serves no ClusterFederatedTrustDomain"); n != 1 {
		t.Fatalf("said %d times that the kind is not served:\n%s", n, logs.String())
	}
	s.want(t, map[string]string{"file.test": "https://file/"})
	if out, err := apiserver.Kubectl(t, nil, "apply", "-f", crd); err != nil {
		t.Fatalf("kubectl apply the CRD: %v\n%s", err, out)
	}
	select {
	case <-w.Synced():
	case <-time.After(30 * time.Second):
		t.Fatalf("the CRD installed, the watcher did not list:\n%s", logs.String())
	}
	kubetest.Eventually(t, 20*time.Second, func() error {
		_, err := c.Resource(fedrelations.GVR).List(ctx, metav1.ListOptions{})
		return err
	})
	create(t, c, "late", "late.test", "https://late/")
	s.want(t, map[string]string{"file.test": "https://file/", "late.test": "https://late/"})
}
