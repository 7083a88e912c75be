// Package source is the mesh configuration warden serves: a YAML
// directory in standalone mode (this file), or the Kubernetes API
// (internal/kube/meshconfig's Watcher).
package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
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
// commands, so they cannot read one directory differently. Any invalid
// file or object fails the whole load (serve keeps its previous
// configuration); the error lists every problem LoadAll finds, one a
// line, each naming the file and the object.
func Load(path string) ([]api.Object, []byte, error) {
	l, err := LoadAll(path)
	if err != nil {
		return nil, nil, err
	}
	if len(l.Problems) > 0 {
		return nil, nil, errors.Join(l.Problems...)
	}
	return l.Objects, l.Sum, nil
}

// Loaded is what LoadAll read.
type Loaded struct {
	Objects  []api.Object // the valid objects
	Sum      []byte       // SHA-256 of the file names and contents
	Files    []string     // the files read, in order
	Problems []error      // every unreadable file and invalid or repeated object, in file order
}

// LoadAll reads path as Load does but does not stop at the first
// problem: every file is read and every object decoded, and each
// unreadable file, invalid object (api.DecodeAll: document, object and
// field) and repeated object is a problem of its own, prefixed with the
// file's path. The error is for a path that cannot be read at all.
func LoadAll(path string) (*Loaded, error) {
	dir, names := path, []string(nil)
	if fi, err := os.Stat(path); err == nil && !fi.IsDir() {
		dir, names = filepath.Dir(path), []string{filepath.Base(path)}
	} else {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("config directory: %w", err)
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
	l := &Loaded{}
	sum := sha256.New()
	seen := map[string]string{}
	for _, n := range names {
		file := filepath.Join(dir, n)
		l.Files = append(l.Files, file)
		b, err := os.ReadFile(file)
		if err != nil {
			l.Problems = append(l.Problems, err)
			continue
		}
		sum.Write([]byte(n))
		sum.Write(b)
		got, errs := api.DecodeAll(b)
		for _, err := range errs {
			l.Problems = append(l.Problems, fmt.Errorf("%s: %w", file, err))
		}
		for _, o := range got {
			if o.Meta().Namespace == "" && !clusterScoped(o) {
				o.Meta().Namespace = "default"
			}
			key := fmt.Sprintf("%s %s/%s", o.Type().Kind, o.Meta().Namespace, o.Meta().Name)
			if prev, dup := seen[key]; dup {
				l.Problems = append(l.Problems, fmt.Errorf("%s: %s is already defined in %s", file, key, prev))
				continue
			}
			seen[key] = n
			l.Objects = append(l.Objects, o)
		}
	}
	l.Sum = sum.Sum(nil)
	return l, nil
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
