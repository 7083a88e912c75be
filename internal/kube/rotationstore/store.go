// Package rotationstore keeps a root rotation in Kubernetes mode in the
// API server, in the install's namespace: internal/rotation's Store
// there, the operators' requests and every replica's report.
package rotationstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/casecret"
)

// A root rotation in Kubernetes mode lives in the install's namespace:
// the prepared CA in Secret warden-ca-next (istio-ca-secret's layout),
// and in ConfigMap warden-ca-rotation the rotation's state (key "state",
// written by the leader, which drives the steps), the operator's request
// (key "request", written by 'warden ca rotate --kubernetes'), and the
// leader's report for --status (key "status"). Every replica follows the
// state; a leader elected mid-rotation resumes from it. In Vault mode,
// where the root rotates in Vault, key "upstream" holds instead the
// roots the leader publishes, signs under and retires (Upstream).
const (
	ConfigMap    = "warden-ca-rotation"
	NextCASecret = "warden-ca-next"
)

// Request is what an operator asks of the rotation.
type Request struct {
	Target ca.Phase `json:"target"`
	Force  bool     `json:"force,omitempty"`
	Abort  bool     `json:"abort,omitempty"`
	// Seq tells one request from the next identical one.
	Seq int64 `json:"seq"`
}

// Store keeps a rotation in the API server. Once Watch has synced, it
// reads the rotation ConfigMap and the reports from its informers' cache
// instead of asking the API server.
type Store struct {
	Client    kubernetes.Interface
	Namespace string
	Clock     ca.Clock

	mu       sync.Mutex
	cached   corelisters.ConfigMapNamespaceLister // the rotation ConfigMap, once Watch synced
	reports  corelisters.ConfigMapNamespaceLister // the reports, once Watch synced
	selector labels.Selector                      // the install's pods (Replicas), once known
}

func (s *Store) cms() interfaceConfigMaps {
	return s.Client.CoreV1().ConfigMaps(s.Namespace)
}

// Watch follows the rotation ConfigMap and the replicas' reports until
// ctx is done, calling changed after every change; the reads below use
// the informers' cache once they have listed.
func (s *Store) Watch(ctx context.Context, changed func()) error {
	cmF := informers.NewSharedInformerFactoryWithOptions(s.Client, 0, informers.WithNamespace(s.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMap }))
	repF := informers.NewSharedInformerFactoryWithOptions(s.Client, 0, informers.WithNamespace(s.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = reportLabel + "=true" }))
	cmInf, repInf := cmF.Core().V1().ConfigMaps(), repF.Core().V1().ConfigMaps()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(_, _ any) { changed() },
		DeleteFunc: func(any) { changed() },
	}
	for _, inf := range []cache.SharedIndexInformer{cmInf.Informer(), repInf.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	defer cmF.Shutdown()
	defer repF.Shutdown()
	if err := kube.StartAndSync(ctx, "root rotation", cmF, repF); err != nil {
		return err
	}
	s.mu.Lock()
	s.cached, s.reports = cmInf.Lister().ConfigMaps(s.Namespace), repInf.Lister().ConfigMaps(s.Namespace)
	s.mu.Unlock()
	changed()
	<-ctx.Done()
	s.mu.Lock()
	s.cached, s.reports = nil, nil
	s.mu.Unlock()
	return nil
}

// configMap is the rotation ConfigMap, from the cache once Watch synced.
func (s *Store) configMap(ctx context.Context) (*corev1.ConfigMap, error) {
	s.mu.Lock()
	c := s.cached
	s.mu.Unlock()
	if c != nil {
		return c.Get(ConfigMap)
	}
	return s.cms().Get(ctx, ConfigMap, metav1.GetOptions{})
}

// State returns the stored rotation state alone, without the prepared CA
// (Load reads both): what a replica compares with the state it follows.
func (s *Store) State(ctx context.Context) (ca.RotationState, bool, error) {
	var st ca.RotationState
	cm, err := s.configMap(ctx)
	if apierrors.IsNotFound(err) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("kube: configmap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	raw, ok := cm.Data["state"]
	if !ok || raw == "" {
		return st, false, nil
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return st, false, fmt.Errorf("kube: configmap %s/%s: state: %v", s.Namespace, ConfigMap, err)
	}
	return st, true, nil
}

type interfaceConfigMaps = interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.ConfigMap, error)
	Create(ctx context.Context, cm *corev1.ConfigMap, opts metav1.CreateOptions) (*corev1.ConfigMap, error)
	Update(ctx context.Context, cm *corev1.ConfigMap, opts metav1.UpdateOptions) (*corev1.ConfigMap, error)
}

// Load returns the rotation in progress with its prepared CA.
func (s *Store) Load(ctx context.Context) (ca.RotationState, *ca.Material, bool, error) {
	st, found, err := s.State(ctx)
	if err != nil || !found {
		return st, nil, false, err
	}
	f, err := (&casecret.Store{Client: s.Client, Namespace: s.Namespace, Name: NextCASecret}).Load(ctx)
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress: %w", err)
	}
	next, err := ca.DecodeMaterial(f, s.Clock.Now())
	if err != nil {
		return st, nil, false, fmt.Errorf("the prepared CA of the rotation in progress (secret %s/%s): %w", s.Namespace, NextCASecret, err)
	}
	if fp := ca.RootFingerprint(next); fp != st.NextRootSHA256 {
		return st, nil, false, fmt.Errorf("secret %s/%s holds root %s, but the rotation prepared %s", s.Namespace, NextCASecret, fp, st.NextRootSHA256)
	}
	return st, next, true, nil
}

// Prepare stores the prepared CA, then the state.
func (s *Store) Prepare(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	// A prepared CA left by a leader that died before writing the state.
	if err := secrets.Delete(ctx, NextCASecret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, NextCASecret, err)
	}
	f, err := next.Encode()
	if err != nil {
		return err
	}
	if err := (&casecret.Store{Client: s.Client, Namespace: s.Namespace, Name: NextCASecret}).Create(ctx, f); err != nil {
		return err
	}
	return s.Save(ctx, st)
}

// Save writes the state.
func (s *Store) Save(ctx context.Context, st ca.RotationState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.setKey(ctx, "state", string(b))
}

// setKey writes one key of the rotation ConfigMap ("" removes it).
func (s *Store) setKey(ctx context.Context, key, value string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := s.cms().Get(ctx, ConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if value == "" {
				return nil
			}
			_, err = s.cms().Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: ConfigMap, Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "warden"}},
				Data:       map[string]string{key: value},
			}, metav1.CreateOptions{FieldManager: kube.FieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), ConfigMap, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if cm.Data[key] == value {
			return nil
		}
		upd := cm.DeepCopy()
		if upd.Data == nil {
			upd.Data = map[string]string{}
		}
		if value == "" {
			delete(upd.Data, key)
		} else {
			upd.Data[key] = value
		}
		_, err = s.cms().Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager})
		return err
	})
	if err != nil {
		return fmt.Errorf("kube: configmap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	return nil
}

// Retire makes the prepared CA istio-ca-secret's, then forgets the
// rotation. Every step can be redone (FinishRetire).
func (s *Store) Retire(ctx context.Context, st ca.RotationState, next *ca.Material) error {
	st.Retiring = true
	if err := s.Save(ctx, st); err != nil {
		return err
	}
	return s.finishRetire(ctx, next)
}

func (s *Store) finishRetire(ctx context.Context, next *ca.Material) error {
	f, err := next.Encode()
	if err != nil {
		return err
	}
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sec, err := secrets.Get(ctx, casecret.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		upd := sec.DeepCopy()
		upd.Data[ca.FileCACert], upd.Data[ca.FileCAKey], upd.Data[ca.FileCertChain], upd.Data[ca.FileRootCert] = f.CACert, f.CAKey, f.CertChain, f.RootCert
		_, err = secrets.Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager})
		return err
	})
	if err != nil {
		return fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, casecret.Name, err)
	}
	return s.Abort(ctx)
}

// FinishRetire completes a retirement a dead leader left half done; it
// reports whether there was one.
func (s *Store) FinishRetire(ctx context.Context) (bool, error) {
	st, next, found, err := s.Load(ctx)
	if err != nil || !found || !st.Retiring {
		return false, err
	}
	return true, s.finishRetire(ctx, next)
}

// Abort forgets the rotation: the state, then the prepared CA.
func (s *Store) Abort(ctx context.Context) error {
	if err := s.setKey(ctx, "state", ""); err != nil {
		return err
	}
	if err := s.setKey(ctx, "status", ""); err != nil {
		return err
	}
	err := s.Client.CoreV1().Secrets(s.Namespace).Delete(ctx, NextCASecret, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, NextCASecret, err)
	}
	return nil
}

// Upstream returns the state of a root rotated upstream (Vault mode),
// as the leader saved it (SaveUpstream); found is false before it has.
func (s *Store) Upstream(ctx context.Context) (state string, found bool, err error) {
	cm, err := s.configMap(ctx)
	if apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("kube: configmap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	state = cm.Data[upstreamKey]
	return state, state != "", nil
}

// SaveUpstream writes the state of a root rotated upstream.
func (s *Store) SaveUpstream(ctx context.Context, state string) error {
	return s.setKey(ctx, upstreamKey, state)
}

// upstreamKey is the rotation ConfigMap's key for Vault mode's state.
const upstreamKey = "upstream"

// Request records an operator's request for the leader and returns its
// sequence number.
func (s *Store) Request(ctx context.Context, r Request) (int64, error) {
	cur, err := s.ReadRequest(ctx)
	if err != nil {
		return 0, err
	}
	r.Seq = cur.Seq + 1
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	return r.Seq, s.setKey(ctx, "request", string(b))
}

// ReadRequest returns the latest request (zero when none).
func (s *Store) ReadRequest(ctx context.Context) (Request, error) {
	var r Request
	cm, err := s.configMap(ctx)
	if apierrors.IsNotFound(err) {
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("kube: configmap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	if raw := cm.Data["request"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return r, fmt.Errorf("kube: configmap %s/%s: request: %v", s.Namespace, ConfigMap, err)
		}
	}
	return r, nil
}

// WriteStatus stores the leader's report (JSON) for --status.
func (s *Store) WriteStatus(ctx context.Context, status []byte) error {
	return s.setKey(ctx, "status", string(status))
}

// ReadStatus returns the leader's last report.
func (s *Store) ReadStatus(ctx context.Context) ([]byte, error) {
	cm, err := s.configMap(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube: configmap %s/%s: %w", s.Namespace, ConfigMap, err)
	}
	if cm.Data["status"] == "" {
		return nil, errors.New("no status reported yet: is a warden serve --kubernetes leader running in this namespace?")
	}
	return []byte(cm.Data["status"]), nil
}

// ReplicaReport is what one replica says of its own streams during a
// rotation: the leader, which sees only its own, waits for every
// replica's too.
type ReplicaReport struct {
	Replica  string    `json:"replica"`
	NextRoot string    `json:"nextRootSHA256"`
	Total    int       `json:"total"`
	Missing  []string  `json:"missing,omitempty"`
	At       time.Time `json:"at"`
}

// reportLabel marks the replicas' report ConfigMaps.
const reportLabel = "warden.io/rotation-report"

func reportName(replica string) string { return ConfigMap + "-" + replica }

// WriteReport stores a replica's report.
func (s *Store) WriteReport(ctx context.Context, r ReplicaReport) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	name := reportName(r.Replica)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.Namespace, Labels: map[string]string{reportLabel: "true", "app.kubernetes.io/managed-by": "warden"}},
				Data:       map[string]string{"report": string(b)},
			}, metav1.CreateOptions{FieldManager: kube.FieldManager})
			return err
		}
		if err != nil {
			return err
		}
		upd := cm.DeepCopy()
		upd.Data = map[string]string{"report": string(b)}
		_, err = cms.Update(ctx, upd, metav1.UpdateOptions{FieldManager: kube.FieldManager})
		return err
	})
}

// DeleteReport removes a replica's report.
func (s *Store) DeleteReport(ctx context.Context, replica string) error {
	err := s.Client.CoreV1().ConfigMaps(s.Namespace).Delete(ctx, reportName(replica), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// ReadReports returns every replica's report.
func (s *Store) ReadReports(ctx context.Context) ([]ReplicaReport, error) {
	var items []*corev1.ConfigMap
	s.mu.Lock()
	c := s.reports
	s.mu.Unlock()
	if c != nil {
		var err error
		if items, err = c.List(labels.Everything()); err != nil {
			return nil, fmt.Errorf("kube: rotation reports: %w", err)
		}
	} else {
		list, err := s.Client.CoreV1().ConfigMaps(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: reportLabel + "=true"})
		if err != nil {
			return nil, fmt.Errorf("kube: rotation reports: %w", err)
		}
		for i := range list.Items {
			items = append(items, &list.Items[i])
		}
	}
	var out []ReplicaReport
	for _, cm := range items {
		var r ReplicaReport
		if err := json.Unmarshal([]byte(cm.Data["report"]), &r); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// ReplicaRunning says whether replica may still be running: a Pod of that
// name exists in the install's namespace and has not finished (a replica
// is its pod, named by --replica-id from POD_NAME). A replica that went
// quiet but whose pod is there may still serve workloads over a path the
// API server cannot see; one whose pod is gone is gone.
func (s *Store) ReplicaRunning(ctx context.Context, replica string) (bool, error) {
	pod, err := s.Client.CoreV1().Pods(s.Namespace).Get(ctx, replica, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed, nil
}

// podLabelsOfOneSet are the labels that tell one ReplicaSet's,
// revision's or StatefulSet member's pods from the others of the same
// workload: left out of the selector of the install's pods, so that the
// pods of a rollout's old and new sets are all found.
var podLabelsOfOneSet = []string{"pod-template-hash", "controller-revision-hash", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"}

// Replicas are the other replicas of the install that run now, known by
// their pods: those in the install's namespace with self's pod's labels
// (less podLabelsOfOneSet), in phase Running, self left out. A replica
// that never reported (it started between rotations, and is cut off from
// the API server now) is one of them. None when self runs in no pod (a
// serve started by hand or by a test), or its pod has no labels.
func (s *Store) Replicas(ctx context.Context, self string) ([]string, error) {
	s.mu.Lock()
	sel := s.selector
	s.mu.Unlock()
	if sel == nil {
		pod, err := s.Client.CoreV1().Pods(s.Namespace).Get(ctx, self, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kube: this replica's pod %s/%s: %w", s.Namespace, self, err)
		}
		set := labels.Set{}
		for k, v := range pod.Labels {
			if !slices.Contains(podLabelsOfOneSet, k) {
				set[k] = v
			}
		}
		if len(set) == 0 {
			return nil, nil
		}
		sel = labels.SelectorFromSet(set)
		s.mu.Lock()
		s.selector = sel
		s.mu.Unlock()
	}
	pods, err := s.Client.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("kube: the install's pods (%s) in %s: %w", sel, s.Namespace, err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.Name != self && p.Status.Phase == corev1.PodRunning {
			out = append(out, p.Name)
		}
	}
	slices.Sort(out)
	return out, nil
}
