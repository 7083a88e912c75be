package meshconfig

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/xds"
)

// Snapshot lists, once, what warden serve --kubernetes watches: the mesh
// configuration (the Istio kinds) and the service registry (Services,
// EndpointSlices, Pods). It is for one-shot tools such as
// warden proxy-config; it gives up after timeout. rejected lists the
// objects left out for failing validation, with their errors.
func Snapshot(ctx context.Context, rc *rest.Config, timeout time.Duration) (objs []api.Object, services []*xds.Service, rejected []string, err error) {
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return nil, nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kube: client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	config := &Watcher{Client: dyn, Discovery: cs.Discovery()}
	reg := &registry.Watcher{Client: cs}
	done := make(chan error, 2)
	go func() { done <- config.Run(ctx) }()
	go func() { done <- reg.Run(ctx) }()
	stopped := 0
	defer func() {
		cancel()
		for ; stopped < 2; stopped++ {
			<-done
		}
	}()
	for _, w := range []struct {
		what   string
		synced <-chan struct{}
	}{
		{"the mesh configuration", config.Synced()},
		{"Services, EndpointSlices and Pods", reg.Synced()},
	} {
		for waiting := true; waiting; {
			select {
			case <-w.synced:
				waiting = false
			case err := <-done:
				stopped++
				if err != nil {
					return nil, nil, nil, err
				}
			case <-ctx.Done():
				return nil, nil, nil, fmt.Errorf("kube: could not list %s within %s", w.what, timeout)
			}
		}
	}
	return config.List(), reg.Services(), config.Rejected(), nil
}
