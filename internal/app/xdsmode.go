package app

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/sds"
	"github.com/wardenmesh/warden/xds"
)

// wireXDS makes the ADS server and feeds it the mesh configuration: the
// --config-dir directory in standalone mode, the informers in Kubernetes
// mode. Streams authenticate like certificate requests (SVID or token).
func (s *standalone) wireXDS(ctx context.Context, f serveFlags, td spiffeid.TrustDomain, identify xds.Identify, cache *sds.Cache, roots func() []*x509.Certificate) (*xds.Server, error) {
	opts := xds.Options{TrustDomain: td}
	srv, err := xds.NewServer(ctx, xds.ServerConfig{
		Options:  opts,
		Identify: identify,
		Debounce: f.debounce,
		Log:      s.log,
		Secrets: func(ctx context.Context, id spiffeid.ID) ([]types.Resource, error) {
			svid, err := cache.Get(ctx, id)
			if err != nil {
				return nil, err
			}
			def, err := sds.TLSCertificate(sds.DefaultName, svid)
			if err != nil {
				return nil, err
			}
			root, err := sds.ValidationContext(sds.RootName, roots())
			if err != nil {
				return nil, err
			}
			return []types.Resource{def, root}, nil
		},
	})
	if err != nil {
		return nil, err
	}
	s.xds = srv
	apply := func(objs []api.Object) error {
		services, err := xds.ServicesFromEntries(objs, "")
		if err != nil {
			return err
		}
		srv.Update(objs, services)
		return nil
	}
	switch {
	case s.config != nil:
		s.config.OnChange = func() {
			if err := apply(s.config.List()); err != nil {
				s.log.Error("xds: configuration not applied", "error", err.Error())
			}
		}
	case f.configDir != "":
		dir := &source.Dir{Path: f.configDir, Log: s.log, OnChange: func(objs []api.Object) {
			if err := apply(objs); err != nil {
				s.log.Error("xds: configuration not applied", "dir", f.configDir, "error", err.Error())
			}
		}}
		objs, watch, err := dir.Start(ctx)
		if err != nil {
			return nil, err
		}
		services, err := xds.ServicesFromEntries(objs, "")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.configDir, err)
		}
		if err := srv.Apply(objs, services); err != nil {
			return nil, fmt.Errorf("%s: %w", f.configDir, err)
		}
		s.log.Info("mesh configuration loaded", "dir", f.configDir, "objects", len(objs), "services", len(services))
		s.tasks = append(s.tasks, watch)
	}
	return srv, nil
}
