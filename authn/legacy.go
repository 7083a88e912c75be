package authn

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wardenmesh/warden/api"
)

// legacyMode maps a legacy peers list to a mode: an mtls peer with no mode
// (or STRICT) is STRICT, PERMISSIVE or allowTls is PERMISSIVE, no mtls
// peer means no mTLS.
func legacyMode(spec api.PolicySpec) Mode {
	for _, p := range spec.Peers {
		if p.MTLS == nil {
			continue
		}
		if p.MTLS.Mode == "PERMISSIVE" || p.MTLS.AllowTLS {
			return Permissive
		}
		return Strict
	}
	return Disable
}

// targets reports whether p targets w on port, and how specifically (2:
// the port is named, 1: the service without ports, 0: not at all).
func targets(p *api.Policy, w Workload, port Port) int {
	best := 0
	for _, t := range p.Spec.Targets {
		if !slices.Contains(w.ServiceNames, t.Name) {
			continue
		}
		if len(t.Ports) == 0 {
			best = max(best, 1)
			continue
		}
		for _, ps := range t.Ports {
			if (ps.Number != 0 && ps.Number == port.Number) || (ps.Name != "" && ps.Name == port.Name) {
				best = 2
			}
		}
	}
	return best
}

// legacy applies Policy and MeshPolicy: a targeted Policy beats the
// namespace Policy "default" beats the MeshPolicy "default"; a target
// naming the port beats one naming only the service. Two targeted Policies
// on one port resolve to the first by name, reported.
func (ix *Index) legacy(w Workload, s *Settings) {
	s.Mode, s.ModeSource = Permissive, "default (no policy sets a mode)"
	var base *api.PolicySpec
	if ix.mesh != nil {
		base = &ix.mesh.Spec
		s.Mode, s.ModeSource = legacyMode(ix.mesh.Spec), "MeshPolicy default"
	}
	var nsDefault *api.Policy
	for _, p := range ix.legNS[w.Namespace] {
		if p.Metadata.Name == "default" && len(p.Spec.Targets) == 0 {
			nsDefault = p
		}
	}
	if nsDefault != nil {
		base = &nsDefault.Spec
		s.Mode, s.ModeSource = legacyMode(nsDefault.Spec), "namespace Policy "+objName(w.Namespace, "default")
	}
	used := map[*api.Policy]bool{}
	for _, port := range sortedPorts(w.Ports) {
		ps := PortSettings{Port: port.Number, Mode: s.Mode, Source: s.ModeSource}
		var chosen *api.Policy
		level := 0
		for _, p := range ix.legNS[w.Namespace] {
			l := targets(p, w, port)
			if l == 0 {
				continue
			}
			switch {
			case l > level:
				chosen, level = p, l
			case l == level:
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("port %d: Policies %s and %s both target it; using %s (first by name)",
					port.Number, objName(w.Namespace, chosen.Metadata.Name), objName(w.Namespace, p.Metadata.Name), objName(w.Namespace, chosen.Metadata.Name)))
			}
		}
		if chosen != nil {
			ps.Mode, ps.Source = legacyMode(chosen.Spec), "targeted Policy "+objName(w.Namespace, chosen.Metadata.Name)
			used[chosen] = true
		}
		s.Ports = append(s.Ports, ps)
	}
	specs := []*api.PolicySpec{}
	if base != nil {
		specs = append(specs, base)
	}
	// What Istio 1.4 did not read either is reported, never silently
	// dropped.
	if ix.mesh != nil && len(ix.mesh.Spec.Targets) > 0 {
		s.Conflicts = append(s.Conflicts, "MeshPolicy default: targets are ignored (a MeshPolicy applies to the whole mesh)")
	}
	note := func(what string, sp *api.PolicySpec) {
		if sp.PeerIsOptional {
			s.Conflicts = append(s.Conflicts, what+": peerIsOptional has no effect (as in Istio 1.4, the TLS handshake itself requires the peer's certificate under mTLS)")
		}
		for i, t := range sp.Targets {
			if len(t.Labels) > 0 {
				s.Conflicts = append(s.Conflicts, fmt.Sprintf("%s: targets[%d].labels are not read (Istio 1.4 never implemented them); the target is the whole service %s", what, i, t.Name))
			}
		}
	}
	if ix.mesh != nil {
		note("MeshPolicy default", &ix.mesh.Spec)
	}
	for _, p := range ix.legNS[w.Namespace] {
		if p == nsDefault || used[p] {
			note("Policy "+objName(w.Namespace, p.Metadata.Name), &p.Spec)
		}
	}
	for _, p := range ix.legNS[w.Namespace] {
		if used[p] {
			specs = append(specs, &p.Spec)
		}
	}
	for _, sp := range specs {
		if sp.PrincipalBinding == "USE_ORIGIN" {
			s.PrincipalBinding = "USE_ORIGIN"
			s.Conflicts = append(s.Conflicts, "principalBinding USE_ORIGIN: authorization still matches the peer's identity (Envoy RBAC cannot take the origin's); the origin JWT is required")
		}
		for _, o := range sp.Origins {
			if o.JWT == nil {
				continue
			}
			// Istio 1.1-1.4's authn filter refused a request without a
			// valid origin unless originIsOptional (USE_ORIGIN needs one).
			required := !sp.OriginIsOptional || sp.PrincipalBinding == "USE_ORIGIN"
			r := JWTRule{Issuer: o.JWT.Issuer, Audiences: o.JWT.Audiences, JwksURI: o.JWT.JwksURI, Jwks: o.JWT.Jwks, FromParams: o.JWT.JwtParams, Source: "legacy origin", Required: required}
			for _, h := range o.JWT.JwtHeaders {
				r.FromHeaders = append(r.FromHeaders, Header{Name: h})
			}
			reportPlainJwksURI(s, "legacy origin "+o.JWT.Issuer, o.JWT.JwksURI)
			for _, tr := range o.JWT.TriggerRules {
				for _, m := range tr.IncludedPaths {
					r.IncludePaths = append(r.IncludePaths, PathMatch(m))
				}
				for _, m := range tr.ExcludedPaths {
					r.ExcludePaths = append(r.ExcludePaths, PathMatch(m))
				}
			}
			s.JWT = append(s.JWT, r)
		}
	}
}

// requestAuthn gathers RequestAuthentication jwtRules: mesh-wide (root
// namespace, no selector), namespace-wide, and selecting the workload.
func (ix *Index) requestAuthn(w Workload, s *Settings) {
	add := func(r *api.RequestAuthentication) {
		src := "RequestAuthentication " + objName(r.Metadata.Namespace, r.Metadata.Name)
		for i, j := range r.Spec.JWTRules {
			rule := JWTRule{Issuer: j.Issuer, Audiences: j.Audiences, JwksURI: j.JwksURI, Jwks: j.Jwks, FromParams: j.FromParams, FromCookies: j.FromCookies,
				OutputPayloadToHeader: j.OutputPayloadToHeader, ForwardOriginalToken: j.ForwardOriginalToken,
				SpaceDelimitedClaims: j.SpaceDelimitedClaims, Source: src}
			for _, h := range j.FromHeaders {
				rule.FromHeaders = append(rule.FromHeaders, Header{Name: h.Name, Prefix: h.Prefix})
			}
			for _, c := range j.OutputClaimToHeaders {
				rule.OutputClaimToHeaders = append(rule.OutputClaimToHeaders, ClaimHeader{Claim: c.Claim, Header: c.Header})
			}
			if j.Timeout != "" {
				rule.Timeout, _ = time.ParseDuration(j.Timeout) // api checked the format
			}
			reportPlainJwksURI(s, fmt.Sprintf("%s jwtRules[%d]", src, i), j.JwksURI)
			s.JWT = append(s.JWT, rule)
		}
	}
	attached := func(r *api.RequestAuthentication) bool { return r.Spec.TargetRef == nil && len(r.Spec.TargetRefs) == 0 }
	// As for authorization, a root-namespace policy applies mesh-wide, or
	// with a selector to the matching workloads of every namespace.
	for _, r := range ix.ra[ix.opts.RootNamespace] {
		if attached(r) && (namespaceWide(r.Spec.Selector) || selects(r.Spec.Selector, w.Labels)) {
			add(r)
		}
	}
	if w.Namespace == ix.opts.RootNamespace {
		return
	}
	for _, r := range ix.ra[w.Namespace] {
		if attached(r) && (namespaceWide(r.Spec.Selector) || selects(r.Spec.Selector, w.Labels)) {
			add(r)
		}
	}
}

// reportPlainJwksURI reports a jwksUri fetched over plain http: accepted,
// as Istio accepts it, but its keys could be replaced on the way.
func reportPlainJwksURI(s *Settings, where, uri string) {
	if strings.HasPrefix(uri, "http://") {
		s.Conflicts = append(s.Conflicts, fmt.Sprintf("%s: jwksUri %s is fetched in the clear, so keys could be replaced on the way (accepted, as Istio does; use https)", where, uri))
	}
}
