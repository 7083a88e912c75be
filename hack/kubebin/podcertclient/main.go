// Command podcertclient is the kubelet's pod-certificate client, for
// warden's tests: k8s.io/kubernetes/pkg/kubelet/podcertificate's
// IssuingManager, unmodified, run as one node's kubelet runs it (its
// credentials, its PodCertificateRequest and Node informers) for one pod,
// with no container runtime. It writes each credential bundle the manager
// produces (the PKCS#8 key, then the chain: what the kubelet projects at
// credentialBundlePath) to --out, and tells the test on stdout, one JSON
// object a line:
//
//	{"event":"issued","n":0,"bundle":"<file>","request":"req-x","beginRefreshAt":"...","notAfter":"..."}
//	{"event":"refresh","n":0,"clock":"..."}   the manager's clock moved past beginRefreshAt
//	{"event":"denied","error":"..."}          the manager gave the volume up (Denied or Failed)
//	{"event":"k8s-event","message":"..."}     an event the manager recorded on the pod
//
// After --refreshes refreshes it exits 0. The manager refreshes at
// beginRefreshAt plus up to five minutes of jitter, on its clock; this
// program's clock is the real one moved forward past that moment just
// long enough for the manager to create its refresh request, so that the
// API server and warden see real time throughout.
package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/kubernetes/pkg/kubelet/podcertificate"
	"k8s.io/utils/clock"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "podcertclient:", err)
		os.Exit(1)
	}
}

// podManager is the kubelet's pod manager as the IssuingManager uses it:
// the pods bound to this node, here one.
type podManager struct{ pod *corev1.Pod }

func (m podManager) GetPodByUID(uid types.UID) (*corev1.Pod, bool) {
	if m.pod.UID == uid {
		return m.pod, true
	}
	return nil, false
}

func (m podManager) GetPods() []*corev1.Pod { return []*corev1.Pod{m.pod} }

// shiftedClock is the real clock, moved forward by an offset.
type shiftedClock struct {
	clock.RealClock
	mu     sync.Mutex
	offset time.Duration
}

func (c *shiftedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *shiftedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

func (c *shiftedClock) set(d time.Duration) {
	c.mu.Lock()
	c.offset = d
	c.mu.Unlock()
}

var out = json.NewEncoder(os.Stdout)

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "the node's kubeconfig (user system:node:<node>)")
	node := flag.String("node", "", "the node's name")
	ns := flag.String("namespace", "", "the pod's namespace")
	podName := flag.String("pod", "", "the pod, bound to --node, with a podCertificate volume")
	refreshes := flag.Int("refreshes", 1, "refreshes to go through after the first issue")
	dir := flag.String("out", "", "directory for the credential bundles")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	if *kubeconfig == "" || *node == "" || *ns == "" || *podName == "" || *dir == "" {
		return errors.New("--kubeconfig, --node, --namespace, --pod and --out are required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	pod, err := cs.CoreV1().Pods(*ns).Get(ctx, *podName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	volume, source := -1, ""
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for i, s := range v.Projected.Sources {
			if s.PodCertificate != nil && volume < 0 {
				volume, source = i, v.Name
			}
		}
	}
	if volume < 0 {
		return fmt.Errorf("pod %s/%s has no podCertificate volume", *ns, *podName)
	}
	// The kubelet's informers: a node may list requests only with its
	// own nodeName selector, and reads its own Node.
	pcrF := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.nodeName=" + *node
	}))
	nodeF := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + *node
	}))
	pcrInf := pcrF.Certificates().V1().PodCertificateRequests()
	events := record.NewFakeRecorder(1000)
	go func() {
		for e := range events.Events {
			_ = out.Encode(map[string]string{"event": "k8s-event", "message": e})
		}
	}()
	clk := &shiftedClock{}
	m := podcertificate.NewIssuingManager(cs, podManager{pod}, events, pcrInf, nodeF.Core().V1().Nodes(), types.NodeName(*node), clk)
	pcrF.Start(ctx.Done())
	nodeF.Start(ctx.Done())
	go m.Run(ctx)
	m.TrackPod(ctx, pod)

	var last []byte
	for n := 0; n <= *refreshes; n++ {
		var key, chain []byte
		for {
			key, chain, err = m.GetPodCertificateCredentialBundle(ctx, *ns, *podName, string(pod.UID), source, volume)
			if err != nil && strings.Contains(err.Error(), "permanently") {
				_ = out.Encode(map[string]string{"event": "denied", "error": err.Error()})
				return nil
			}
			if err == nil && string(chain) != string(last) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("no new credentials within %s (last: %v)", *timeout, err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		last = chain
		r, err := requestOf(pcrInf.Lister().List, chain)
		if err != nil {
			return err
		}
		file := filepath.Join(*dir, fmt.Sprintf("credentialbundle-%d.pem", n))
		if err := os.WriteFile(file, append(append([]byte(nil), key...), chain...), 0o600); err != nil {
			return err
		}
		_ = out.Encode(map[string]any{"event": "issued", "n": n, "bundle": file, "request": r.Name,
			"beginRefreshAt": r.Status.BeginRefreshAt.Time, "notAfter": r.Status.NotAfter.Time})
		if n == *refreshes {
			break
		}
		// Past beginRefreshAt and the largest jitter, until the manager
		// has made its refresh request; then real time again.
		clk.set(time.Until(r.Status.BeginRefreshAt.Time.Add(5*time.Minute + time.Second)))
		_ = out.Encode(map[string]any{"event": "refresh", "n": n, "clock": clk.Now()})
		before := names(pcrInf.Lister().List)
		m.TrackPod(ctx, pod)
		for len(names(pcrInf.Lister().List)) == len(before) {
			select {
			case <-ctx.Done():
				return errors.New("the manager made no refresh request")
			case <-time.After(20 * time.Millisecond):
			}
		}
		clk.set(0)
	}
	return nil
}

type lister func(labels.Selector) ([]*certv1.PodCertificateRequest, error)

// requestOf finds the request whose chain the manager handed out.
func requestOf(list lister, chain []byte) (*certv1.PodCertificateRequest, error) {
	leaf, _ := pem.Decode(chain)
	if leaf == nil {
		return nil, errors.New("an empty chain")
	}
	rs, err := list(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if b, _ := pem.Decode([]byte(r.Status.CertificateChain)); b != nil && string(b.Bytes) == string(leaf.Bytes) {
			return r, nil
		}
	}
	return nil, errors.New("no request holds the chain the manager handed out")
}

func names(list lister) map[string]bool {
	rs, _ := list(labels.Everything())
	out := map[string]bool{}
	for _, r := range rs {
		out[r.Name] = true
	}
	return out
}
