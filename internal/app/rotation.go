package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/rotation"
)

func runCARotate(ctx context.Context, e *env, args []string) error {
	fs := e.flags("ca rotate")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "the data directory of the running 'warden serve' (its admin socket is there)")
	force := fs.Bool("force", false, "do not wait: activate although consumers lack the new root, retire before the old key's last leaf expires")
	statusOnly := fs.Bool("status", false, "show the rotation's phase, who holds which bundle, and what the next step waits for")
	wait := fs.Bool("wait", false, "wait until the server has reached the step (a progress line on standard error as it goes), up to --timeout")
	timeout := fs.Duration("timeout", 15*time.Minute, "with --wait: how long to wait (the server carries on after it)")
	kubeMode := fs.Bool("kubernetes", false, "rotate the root of a warden install on Kubernetes (the request goes to its leader through the API server)")
	var kubeconfig, kubeContext string
	registerKubeconfig(fs, e, &kubeconfig, &kubeContext, "with --kubernetes: ")
	namespace := fs.String("namespace", "warden-system", "with --kubernetes: the install's namespace")
	if err := parse(fs, args); err != nil {
		return err
	}
	req, err := rotateRequest(*statusOnly, *force, fs.Args())
	if err != nil {
		return err
	}
	if *wait && (req == nil || req.Abort) {
		return fmt.Errorf("%w: --wait goes with a step (prepare, publish, activate, retire)", errUsage)
	}
	if *timeout <= 0 {
		return fmt.Errorf("%w: --timeout must be positive", errUsage)
	}
	var (
		api rotationAPI
		cmd string // this command, for the advice it prints
	)
	if *kubeMode {
		k, err := newKubeRotation(kubeconfig, kubeContext, *namespace)
		if err != nil {
			return err
		}
		api, cmd = k, "warden ca rotate --kubernetes --namespace "+*namespace
		if kubeconfig != "" && kubeconfig != e.getenv("KUBECONFIG") {
			cmd += " --kubeconfig " + kubeconfig
		}
		if kubeContext != "" {
			cmd += " --context " + kubeContext
		}
	} else {
		api, cmd = adminRotation{dataDir: *dataDir, client: rotation.AdminClient(*dataDir)}, "warden ca rotate --data-dir "+*dataDir
	}
	if req == nil {
		st, err := api.status(ctx)
		if err != nil {
			return err
		}
		st.Print(e.stdout)
		return nil
	}
	st, err := api.request(ctx, *req)
	if err != nil {
		return err
	}
	if req.Abort {
		st.Print(e.stdout)
		return nil
	}
	if *wait {
		return waitRotation(ctx, e, api, req.Target, st, *timeout, cmd)
	}
	st.Print(e.stdout)
	if err := stepFailed(st, cmd); err != nil {
		return err
	}
	if reached, err := rotationReached(st, req.Target, st.NextRoot); err == nil && !reached {
		printNext(e.stdout, st, req.Target, cmd)
	}
	return nil
}

// rotateRequest reads what 'ca rotate' asks: nil for --status alone.
func rotateRequest(statusOnly, force bool, rest []string) (*rotationstore.Request, error) {
	switch {
	case statusOnly && len(rest) == 0:
		return nil, nil
	case len(rest) == 1 && rest[0] == "abort":
		return &rotationstore.Request{Abort: true}, nil
	case len(rest) == 1:
		to, err := ca.ParsePhase(rest[0])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		return &rotationstore.Request{Target: to, Force: force}, nil
	}
	return nil, fmt.Errorf("%w: want one of prepare, publish, activate, retire, abort, or --status", errUsage)
}

// rotationAPI is where 'ca rotate' reaches the rotation: a standalone
// serve's admin socket, or an install's leader through the API server.
type rotationAPI interface {
	status(ctx context.Context) (rotation.Status, error)
	// request returns the status once the server has taken the request
	// and the steps it could take at once (a failed one in StepError).
	request(ctx context.Context, req rotationstore.Request) (rotation.Status, error)
}

var (
	_ rotationAPI = adminRotation{}
	_ rotationAPI = (*kubeRotation)(nil)
)

type adminRotation struct {
	dataDir string
	client  *http.Client
}

func (a adminRotation) status(ctx context.Context) (rotation.Status, error) {
	return a.do(ctx, http.MethodGet, "http://warden/rotation")
}

func (a adminRotation) request(ctx context.Context, req rotationstore.Request) (rotation.Status, error) {
	if req.Abort {
		return a.do(ctx, http.MethodPost, "http://warden/rotation/abort")
	}
	return a.do(ctx, http.MethodPost, fmt.Sprintf("http://warden/rotation?to=%s&force=%t", req.Target, req.Force))
}

func (a adminRotation) do(ctx context.Context, method, url string) (rotation.Status, error) {
	var st rotation.Status
	hr, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := a.client.Do(hr)
	if err != nil {
		return st, fmt.Errorf("no warden serve answers on %s (is it running with --data-dir %s?): %w", filepath.Join(a.dataDir, rotation.AdminSocket), a.dataDir, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return st, errors.New(strings.TrimSpace(b.String()))
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("the answer on %s: %w", filepath.Join(a.dataDir, rotation.AdminSocket), err)
	}
	return st, nil
}

// kubeRotation asks an install's leader through the rotation ConfigMap,
// and reads the leader's report.
type kubeRotation struct {
	store     *rotationstore.Store
	namespace string
}

func newKubeRotation(kubeconfig, kubeContext, namespace string) (*kubeRotation, error) {
	rc, err := kube.RESTConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, err
	}
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return nil, err
	}
	return &kubeRotation{store: &rotationstore.Store{Client: cs, Namespace: namespace, Clock: ca.SystemClock{}}, namespace: namespace}, nil
}

func (k *kubeRotation) status(ctx context.Context) (rotation.Status, error) {
	var st rotation.Status
	b, err := k.store.ReadStatus(ctx)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// request waits for the leader to take it: the leader reports after
// the steps it took at once.
func (k *kubeRotation) request(ctx context.Context, req rotationstore.Request) (rotation.Status, error) {
	// Where the root rotates elsewhere (Vault), the leader takes no
	// requests: say so now rather than after the wait.
	if st, err := k.status(ctx); err == nil && st.Upstream != "" {
		return st, fmt.Errorf("%w: %s", ca.ErrRotation, st.Manual)
	}
	seq, err := k.store.Request(ctx, req)
	if err != nil {
		return rotation.Status{}, err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, err := k.status(ctx)
		if err != nil || st.RequestSeq < seq {
			continue
		}
		if st.RequestError != "" {
			return st, errors.New(st.RequestError)
		}
		return st, nil
	}
	return rotation.Status{}, fmt.Errorf("the leader of the install in %s did not take the request within 30 s (is warden serve running there?)", k.namespace)
}

// stepFailed is the error of a step that failed on the server (nil when
// none did): the server keeps retrying it.
func stepFailed(st rotation.Status, cmd string) error {
	if st.StepError == "" {
		return nil
	}
	phase, _ := ca.ParsePhase(st.Phase)
	msg := fmt.Sprintf("the server could not %s: %s. It retries every second (its log repeats the error once a minute)", stepVerb(phase), st.StepError)
	if phase.Index() < ca.PhaseActivated.Index() {
		msg += fmt.Sprintf("; fix the cause, or drop the request with '%s abort'", cmd)
	}
	return errors.New(msg)
}

// stepVerb names the step that follows phase.
func stepVerb(phase ca.Phase) string {
	switch phase {
	case ca.PhaseNone:
		return "prepare"
	case ca.PhasePrepared:
		return "publish"
	case ca.PhasePublished:
		return "activate"
	}
	return "retire"
}

// targetVerb names the step that reaches target.
func targetVerb(target ca.Phase) string {
	switch target {
	case ca.PhasePrepared:
		return "prepare"
	case ca.PhasePublished:
		return "publish"
	case ca.PhaseActivated:
		return "activate"
	}
	return "retire"
}

// rotationReached says whether st has reached target; next is the new
// root's fingerprint, which the current one is once a rotation retired.
// A rotation that ended otherwise was aborted: an error.
func rotationReached(st rotation.Status, target ca.Phase, next string) (bool, error) {
	phase, err := ca.ParsePhase(st.Phase)
	if err != nil {
		return false, err
	}
	switch {
	case phase != ca.PhaseNone:
		return phase.Index() >= target.Index(), nil
	case st.Target != "none":
		return false, nil // the first step is still to come
	case target == ca.PhaseRetired && (next == "" || st.CurrentRoot == next):
		return true, nil
	}
	return false, errors.New("the rotation was aborted (or the server restarted before preparing)")
}

// printNext says what the server does next, by itself, for a request
// it has not carried out yet, and how to wait for it or skip the wait.
func printNext(w io.Writer, st rotation.Status, target ca.Phase, cmd string) {
	verb := targetVerb(target)
	what, force := "carries on by itself", ""
	switch st.Phase {
	case string(ca.PhasePublished):
		what = "activates by itself once the wait above is over"
		force = "activates now, although consumers that lack the new root will refuse the certificates signed under it"
	case string(ca.PhaseActivated):
		what = "retires the old root by itself once the wait above is over"
		force = "retires now, although the certificates the old key signed stop verifying"
	}
	fmt.Fprintf(w, "next: the server %s; nothing more to run. '%s --wait %s' waits for it", what, cmd, verb)
	if force != "" && !st.Force {
		fmt.Fprintf(w, "; '%s --force %s' %s", cmd, verb, force)
	}
	fmt.Fprintln(w, ".")
}

// waitRotation follows the rotation until it reaches target (its status
// printed then), a step fails, or timeout passes, with a line on stderr
// whenever the phase or what it waits for changes.
func waitRotation(ctx context.Context, e *env, api rotationAPI, target ca.Phase, st rotation.Status, timeout time.Duration, cmd string) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	next, last := st.NextRoot, ""
	for {
		if st.NextRoot != "" {
			next = st.NextRoot
		}
		reached, err := rotationReached(st, target, next)
		if err != nil || reached {
			st.Print(e.stdout)
			return err
		}
		if err := stepFailed(st, cmd); err != nil {
			st.Print(e.stdout)
			return err
		}
		progress := st.Phase
		if st.Waiting != "" {
			progress += "; " + st.Waiting
		}
		if progress != last {
			fmt.Fprintf(e.stderr, "warden ca rotate: %s\n", progress)
			last = progress
		}
		select {
		case <-wctx.Done():
			st.Print(e.stdout)
			why := fmt.Sprintf("timed out after %s", timeout)
			if ctx.Err() != nil {
				why = "interrupted"
			}
			state := "it is " + st.Phase
			if st.Waiting != "" {
				state += ", and " + st.Waiting
			}
			return fmt.Errorf("%s waiting for the rotation to %s: %s. The server carries on by itself; follow it with '%s --status'",
				why, targetVerb(target), state, cmd)
		case <-tick.C:
		}
		s, err := api.status(wctx)
		switch {
		case err == nil:
			st = s
		case wctx.Err() == nil:
			return err
		}
	}
}
