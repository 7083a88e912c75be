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
	kubeMode := fs.Bool("kubernetes", false, "rotate the root of a warden install on Kubernetes (the request goes to its leader through the API server)")
	kubeconfig := fs.String("kubeconfig", e.getenv("KUBECONFIG"), "with --kubernetes: kubeconfig file; empty means in-cluster")
	namespace := fs.String("namespace", "warden-system", "with --kubernetes: the install's namespace")
	if err := parse(fs, args); err != nil {
		return err
	}
	req, err := rotateRequest(*statusOnly, *force, fs.Args())
	if err != nil {
		return err
	}
	if *kubeMode {
		return rotateKube(ctx, e, *kubeconfig, *namespace, req)
	}
	c := rotation.AdminClient(*dataDir)
	var resp *http.Response
	switch {
	case req == nil:
		resp, err = c.Get("http://warden/rotation")
	case req.Abort:
		resp, err = c.Post("http://warden/rotation/abort", "", nil)
	default:
		resp, err = c.Post(fmt.Sprintf("http://warden/rotation?to=%s&force=%t", req.Target, req.Force), "", nil)
	}
	if err != nil {
		return fmt.Errorf("no warden serve answers on %s (is it running with --data-dir %s?): %w", filepath.Join(*dataDir, rotation.AdminSocket), *dataDir, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return errors.New(strings.TrimSpace(b.String()))
	}
	var st rotation.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err
	}
	st.Print(e.stdout)
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

// rotateKube asks an install's leader for a rotation step through the
// rotation ConfigMap, and prints the leader's report once it took it.
func rotateKube(ctx context.Context, e *env, kubeconfig, namespace string, req *rotationstore.Request) error {
	rc, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return err
	}
	store := &rotationstore.Store{Client: cs, Namespace: namespace, Clock: ca.SystemClock{}}
	read := func() (rotation.Status, error) {
		var st rotation.Status
		b, err := store.ReadStatus(ctx)
		if err != nil {
			return st, err
		}
		return st, json.Unmarshal(b, &st)
	}
	if req == nil {
		st, err := read()
		if err != nil {
			return err
		}
		st.Print(e.stdout)
		return nil
	}
	seq, err := store.Request(ctx, *req)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, err := read()
		if err != nil || st.RequestSeq < seq {
			continue
		}
		st.Print(e.stdout)
		if st.RequestError != "" {
			return errors.New(st.RequestError)
		}
		return nil
	}
	return fmt.Errorf("the leader of the install in %s did not take the request within 30 s (is warden serve running there?)", namespace)
}
