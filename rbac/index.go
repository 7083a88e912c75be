package rbac

import (
	"github.com/wardenmesh/warden/api"
)

// Index holds authorization objects by namespace, so compiling one
// workload reads only its namespace and the root namespace.
type Index struct {
	opts   Options
	byNS   map[string][]*api.AuthorizationPolicy
	legacy map[string][]api.Object // ServiceRoles and bindings by namespace
	config []api.Object            // ClusterRbacConfig / RbacConfig
}

// NewIndex indexes the authorization kinds among objs.
func NewIndex(objs []api.Object, opts Options) *Index {
	opts.fill()
	ix := &Index{opts: opts, byNS: map[string][]*api.AuthorizationPolicy{}, legacy: map[string][]api.Object{}}
	for _, o := range objs {
		switch x := o.(type) {
		case *api.AuthorizationPolicy:
			ix.byNS[x.Metadata.Namespace] = append(ix.byNS[x.Metadata.Namespace], x)
		case *api.ServiceRole, *api.ServiceRoleBinding:
			ix.legacy[o.Meta().Namespace] = append(ix.legacy[o.Meta().Namespace], o)
		case *api.ClusterRbacConfig, *api.RbacConfig:
			ix.config = append(ix.config, o)
		}
	}
	return ix
}

// Compile compiles w's filters from the indexed objects.
func (ix *Index) Compile(w Workload, tcp bool) (*Output, error) {
	opts := ix.opts
	opts.TCP = tcp
	objs := make([]api.Object, 0, len(ix.byNS[w.Namespace])+len(ix.byNS[opts.RootNamespace]))
	for _, p := range ix.byNS[opts.RootNamespace] {
		objs = append(objs, p)
	}
	if w.Namespace != opts.RootNamespace {
		for _, p := range ix.byNS[w.Namespace] {
			objs = append(objs, p)
		}
	}
	objs = append(objs, ix.config...)
	objs = append(objs, ix.legacy[w.Namespace]...)
	return Compile(objs, w, opts)
}

// Selects reports whether policy p applies to workload w: an edit of p
// changes exactly the filters of the workloads it selects (before or after
// the edit).
func Selects(p *api.AuthorizationPolicy, w Workload, opts Options) bool {
	opts.fill()
	return len(selected([]*api.AuthorizationPolicy{p}, w, opts)) == 1
}

// Affected lists the workloads among ws whose filters an edit changing p
// from old to new (either may be nil: create, delete) must recompile.
func Affected(old, new *api.AuthorizationPolicy, ws []Workload, opts Options) []Workload {
	var out []Workload
	for _, w := range ws {
		if (old != nil && Selects(old, w, opts)) || (new != nil && Selects(new, w, opts)) {
			out = append(out, w)
		}
	}
	return out
}
