package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
)

// podWatches are the pod WATCH requests the API server holds open now,
// by its own count (apiserver_longrunning_requests), not a client's.
func podWatches(t *testing.T) int {
	t.Helper()
	body, err := apiserver.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(kubetest.Context(t))
	if err != nil {
		t.Fatalf("the API server's metrics: %v", err)
	}
	n, found := 0, false
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, "apiserver_longrunning_requests{") {
			continue
		}
		found = true
		if !strings.Contains(l, `resource="pods"`) || !strings.Contains(l, `verb="WATCH"`) || !strings.Contains(l, `subresource=""`) {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		n += int(v)
	}
	if !found {
		t.Fatal("the API server's metrics have no apiserver_longrunning_requests")
	}
	return n
}

// TestKubeOnePodWatchPerReplica: each replica watches the cluster's pods
// once, counted at the API server: the service registry, the node
// authorizer (on by default: --trusted-node-accounts) and the leader's
// pod-certificate signer share one informer. Before, a leader held three
// pod watches and another replica two. The e2e tests run one at a time,
// so no other test's replica watches meanwhile.
func TestKubeOnePodWatchPerReplica(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	before := podWatches(t)
	_, logsA, _ := startServeWith(t, ns, "replica-a")
	// The leader's signer has listed (with the registry and the node
	// authorizer started with the replica, before it).
	testkit.WaitLog(t, logsA, `msg="signing pod certificate requests"`, 30*time.Second)
	_, logsB, _ := startServeWith(t, ns, "replica-b")
	time.Sleep(3 * time.Second) // replica-b's informers listed and watching
	// Held for a while, not only once: a second watch opened late
	// would show.
	for i := range 4 {
		if got := podWatches(t) - before; got != 2 {
			t.Fatalf("check %d: %d pod watches open at the API server for two replicas (a leader signing pod certificates and another), want 2\nreplica a:\n%s\nreplica b:\n%s", i, got, logsA.String(), logsB.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("pod watches at the API server: %d before the replicas, %d with them", before, before+2)
}
