package authn

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/wardenmesh/warden/api"
)

// Index holds authentication objects by namespace, so computing one
// workload's settings looks at its namespace and the root namespace only.
type Index struct {
	opts  Options
	pa    map[string][]*api.PeerAuthentication
	ra    map[string][]*api.RequestAuthentication
	mesh  *api.MeshPolicy
	legNS map[string][]*api.Policy
}

// NewIndex indexes the authentication kinds among objs (others are
// ignored) and checks what can be checked without a workload: jwksUri must
// be https, a MeshPolicy must be named default. Errors name the object and
// field.
func NewIndex(objs []api.Object, opts Options) (*Index, error) {
	opts.fill()
	ix := &Index{opts: opts, pa: map[string][]*api.PeerAuthentication{}, ra: map[string][]*api.RequestAuthentication{}, legNS: map[string][]*api.Policy{}}
	var errs []error
	for _, o := range objs {
		m := o.Meta()
		switch x := o.(type) {
		case *api.PeerAuthentication:
			ix.pa[m.Namespace] = append(ix.pa[m.Namespace], x)
		case *api.RequestAuthentication:
			for i, r := range x.Spec.JWTRules {
				if err := checkJwksURI(r.JwksURI); err != nil {
					errs = append(errs, fmt.Errorf("authn: RequestAuthentication %s: spec.jwtRules[%d].jwksUri: %v", objName(m.Namespace, m.Name), i, err))
				}
				if r.Issuer == "" {
					errs = append(errs, fmt.Errorf("authn: RequestAuthentication %s: spec.jwtRules[%d].issuer is required", objName(m.Namespace, m.Name), i))
				}
			}
			ix.ra[m.Namespace] = append(ix.ra[m.Namespace], x)
		case *api.MeshPolicy:
			if m.Name != "default" {
				errs = append(errs, fmt.Errorf("authn: MeshPolicy %s: only the MeshPolicy named default is honoured", m.Name))
				continue
			}
			ix.mesh = x
			errs = append(errs, checkLegacyJWT("MeshPolicy", m, x.Spec)...)
		case *api.Policy:
			ix.legNS[m.Namespace] = append(ix.legNS[m.Namespace], x)
			errs = append(errs, checkLegacyJWT("Policy", m, x.Spec)...)
		}
	}
	// Oldest first: Istio resolves conflicting policies by creation time.
	for ns := range ix.pa {
		sort.Slice(ix.pa[ns], func(i, j int) bool { return api.Older(&ix.pa[ns][i].Metadata, &ix.pa[ns][j].Metadata) })
	}
	for ns := range ix.ra {
		sort.Slice(ix.ra[ns], func(i, j int) bool { return ix.ra[ns][i].Metadata.Name < ix.ra[ns][j].Metadata.Name })
	}
	for ns := range ix.legNS {
		sort.Slice(ix.legNS[ns], func(i, j int) bool { return ix.legNS[ns][i].Metadata.Name < ix.legNS[ns][j].Metadata.Name })
	}
	return ix, errors.Join(errs...)
}

// DiscoveryIssuers are the issuers whose keys come from OIDC discovery:
// those of the JWT rules (RequestAuthentication jwtRules, legacy
// origins) that name neither jwks nor jwksUri, sorted, each once. The
// control plane fetches the keys of these and of no other issuer.
func (ix *Index) DiscoveryIssuers() []string {
	set := map[string]bool{}
	for _, ras := range ix.ra {
		for _, ra := range ras {
			for _, j := range ra.Spec.JWTRules {
				if j.Jwks == "" && j.JwksURI == "" {
					set[j.Issuer] = true
				}
			}
		}
	}
	legacy := func(spec *api.PolicySpec) {
		for _, o := range spec.Origins {
			if o.JWT != nil && o.JWT.Jwks == "" && o.JWT.JwksURI == "" {
				set[o.JWT.Issuer] = true
			}
		}
	}
	if ix.mesh != nil {
		legacy(&ix.mesh.Spec)
	}
	for _, ps := range ix.legNS {
		for _, p := range ps {
			legacy(&p.Spec)
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func checkLegacyJWT(kind string, m *api.ObjectMeta, spec api.PolicySpec) []error {
	var errs []error
	for i, o := range spec.Origins {
		if o.JWT == nil {
			continue
		}
		if err := checkJwksURI(o.JWT.JwksURI); err != nil {
			errs = append(errs, fmt.Errorf("authn: %s %s: spec.origins[%d].jwt.jwksUri: %v", kind, objName(m.Namespace, m.Name), i, err))
		}
	}
	return errs
}

// checkJwksURI refuses what is not an http(s) URL; plain http is
// accepted (as by Istio) and reported where it applies.
func checkJwksURI(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", s)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return fmt.Errorf("%q: want an https URL", s)
	}
	return nil
}

func selects(sel *api.WorkloadSelector, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 {
		return false
	}
	for k, v := range sel.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func namespaceWide(sel *api.WorkloadSelector) bool { return sel == nil || len(sel.MatchLabels) == 0 }

// Effective computes w's authentication settings.
func (ix *Index) Effective(w Workload) (*Settings, error) {
	s := &Settings{Workload: w, PrincipalBinding: "USE_PEER"}
	modern, err := ix.modern(w, s)
	if err != nil {
		return nil, err
	}
	if !modern {
		ix.legacy(w, s)
	}
	ix.requestAuthn(w, s)
	return s, nil
}

// namespaceWidePA returns the namespace-wide PeerAuthentication of ns: the
// oldest (creationTimestamp, then name), as Istio picks it; the others are
// reported.
func (ix *Index) namespaceWidePA(ns string, s *Settings) *api.PeerAuthentication {
	var found []*api.PeerAuthentication
	for _, p := range ix.pa[ns] {
		if namespaceWide(p.Spec.Selector) {
			found = append(found, p)
		}
	}
	if len(found) > 1 {
		s.Conflicts = append(s.Conflicts, conflict("namespace-wide PeerAuthentications in "+ns, found))
	}
	if len(found) == 0 {
		return nil
	}
	return found[0]
}

// conflict reports which of several policies at one level wins (the
// first: the oldest) and which are ignored.
func conflict(what string, ps []*api.PeerAuthentication) string {
	var ignored []string
	for _, p := range ps[1:] {
		ignored = append(ignored, objName(p.Metadata.Namespace, p.Metadata.Name))
	}
	return fmt.Sprintf("%d %s: using %s (the oldest, by creationTimestamp then name), ignoring %s",
		len(ps), what, objName(ps[0].Metadata.Namespace, ps[0].Metadata.Name), strings.Join(ignored, ", "))
}

func modeOf(m *api.PeerMTLS) Mode {
	if m == nil || m.Mode == "" || m.Mode == "UNSET" {
		return ""
	}
	return Mode(m.Mode)
}

// modern applies PeerAuthentication: workload-level beats namespace-level
// beats mesh-level; UNSET inherits; port-level overrides. It reports
// whether any PeerAuthentication applied.
func (ix *Index) modern(w Workload, s *Settings) (bool, error) {
	mesh := ix.namespaceWidePA(ix.opts.RootNamespace, s)
	var nsPA, wl *api.PeerAuthentication
	var selecting []*api.PeerAuthentication
	if w.Namespace != ix.opts.RootNamespace {
		nsPA = ix.namespaceWidePA(w.Namespace, s)
	}
	for _, p := range ix.pa[w.Namespace] {
		if !selects(p.Spec.Selector, w.Labels) {
			continue
		}
		if w.Namespace == ix.opts.RootNamespace {
			// Istio reads only namespace-wide policies in the root
			// namespace.
			s.Conflicts = append(s.Conflicts, fmt.Sprintf("PeerAuthentication %s: a selector in the root namespace is ignored (only the mesh-wide policy applies there)", objName(p.Metadata.Namespace, p.Metadata.Name)))
			continue
		}
		selecting = append(selecting, p)
	}
	if len(selecting) > 0 {
		wl = selecting[0]
	}
	if len(selecting) > 1 {
		s.Conflicts = append(s.Conflicts, conflict("PeerAuthentications select this workload", selecting))
	}
	if mesh == nil && nsPA == nil && wl == nil {
		return false, nil
	}
	s.Mode, s.ModeSource = Permissive, "default (no policy sets a mode)"
	for _, lvl := range []struct {
		p    *api.PeerAuthentication
		what string
	}{{mesh, "mesh"}, {nsPA, "namespace"}, {wl, "workload"}} {
		if lvl.p == nil {
			continue
		}
		if m := modeOf(lvl.p.Spec.MTLS); m != "" {
			s.Mode = m
			s.ModeSource = fmt.Sprintf("%s-level PeerAuthentication %s", lvl.what, objName(lvl.p.Metadata.Namespace, lvl.p.Metadata.Name))
		}
	}
	for _, p := range sortedPorts(w.Ports) {
		ps := PortSettings{Port: p.Number, Mode: s.Mode, Source: s.ModeSource}
		if wl != nil {
			if pm, ok := wl.Spec.PortLevelMTLS[strconv.Itoa(int(p.Number))]; ok {
				if m := modeOf(&pm); m != "" {
					ps.Mode = m
					ps.Source = fmt.Sprintf("port-level mtls of PeerAuthentication %s", objName(w.Namespace, wl.Metadata.Name))
				}
			}
		}
		s.Ports = append(s.Ports, ps)
	}
	if wl == nil {
		for _, p := range ix.pa[w.Namespace] {
			if len(p.Spec.PortLevelMTLS) > 0 && namespaceWide(p.Spec.Selector) {
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("PeerAuthentication %s: portLevelMtls needs a selector and is ignored", objName(w.Namespace, p.Metadata.Name)))
			}
		}
	}
	return true, nil
}
