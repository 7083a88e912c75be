// Package source is the mesh configuration warden serves: a YAML
// directory in standalone mode (this file), or the Kubernetes API
// (internal/kube/meshconfig's Watcher).
package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wardenmesh/warden/api"
)

// Dir reads every *.yaml, *.yml and *.json file of a directory (not
// recursive) and re-reads it when a file changes.
type Dir struct {
	Path     string
	Interval time.Duration // poll interval (default 1s)
	Log      *slog.Logger
	// OnChange receives the objects after every successful load that
	// differs from the previous one. A load with an error is logged and
	// skipped: the previous configuration stays.
	OnChange func([]api.Object)

	failures atomic.Uint64
}

// Failures counts the reloads refused for an invalid file (metrics); the
// previous configuration stayed each time.
func (d *Dir) Failures() uint64 { return d.failures.Load() }

// Load reads a directory once — its *.yaml, *.yml and *.json files in
// name order, hidden ones (".x.yaml", editors' swap files) skipped — or a
// single file. Namespaced objects without a namespace go to "default" (as
// kubectl applies them); an object defined twice is an error. It is the
// one loader of serve --config-dir and the policy and proxy-config
// commands, so they cannot read one directory differently. Errors name the
// file and the object.
func Load(path string) ([]api.Object, []byte, error) {
	dir, names := path, []string(nil)
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		dir, names = filepath.Dir(path), []string{filepath.Base(path)}
	} else {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, nil, fmt.Errorf("config directory: %w", err)
		}
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
					names = append(names, e.Name())
				}
			}
		}
		sort.Strings(names)
	}
	var objs []api.Object
	sum := sha256.New()
	seen := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, nil, err
		}
		sum.Write([]byte(n))
		sum.Write(b)
		got, err := api.Decode(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, n), err)
		}
		for _, o := range got {
			if o.Meta().Namespace == "" && !clusterScoped(o) {
				o.Meta().Namespace = "default"
			}
			key := fmt.Sprintf("%s %s/%s", o.Type().Kind, o.Meta().Namespace, o.Meta().Name)
			if prev, dup := seen[key]; dup {
				return nil, nil, fmt.Errorf("%s: %s is already defined in %s", filepath.Join(dir, n), key, prev)
			}
			seen[key] = n
		}
		objs = append(objs, got...)
	}
	return objs, sum.Sum(nil), nil
}

func clusterScoped(o api.Object) bool {
	for _, k := range api.Kinds {
		if k.Kind == o.Type().Kind {
			return k.Cluster
		}
	}
	return false
}

// Run loads the directory, calls OnChange, and polls until ctx is done.
// The first load must succeed.
func (d *Dir) Run(ctx context.Context) error {
	objs, sum, err := Load(d.Path)
	if err != nil {
		return err
	}
	d.OnChange(objs)
	return d.watch(ctx, sum)
}

// Start loads once (returning the error) and polls in the background.
func (d *Dir) Start(ctx context.Context) ([]api.Object, func(context.Context) error, error) {
	objs, sum, err := Load(d.Path)
	if err != nil {
		return nil, nil, err
	}
	return objs, func(ctx context.Context) error { return d.watch(ctx, sum) }, nil
}

func (d *Dir) watch(ctx context.Context, sum []byte) error {
	interval := d.Interval
	if interval == 0 {
		interval = time.Second
	}
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		objs, next, err := Load(d.Path)
		if err != nil {
			if err.Error() != lastErr {
				d.failures.Add(1)
				log.Error("configuration not reloaded; keeping the previous one", "dir", d.Path, "error", err.Error())
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if bytes.Equal(next, sum) {
			continue
		}
		sum = next
		log.Info("configuration reloaded", "dir", d.Path, "objects", len(objs))
		d.OnChange(objs)
	}
}
