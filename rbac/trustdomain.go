package rbac

import (
	"slices"
	"strings"
)

// trustDomains is the mesh's trust domain followed by its aliases (Istio
// meshConfig trustDomain + trustDomainAliases): while a mesh moves to a
// new trust domain, a principal named in a policy under any of them (or
// under "cluster.local", which always means the local trust domain)
// matches the same workload under every one of them.
type trustDomains []string

func (o Options) trustDomains() trustDomains {
	return append(trustDomains{o.TrustDomain.Name()}, o.TrustDomainAliases...)
}

// principalSet expands principals as trustDomains.principals does, and
// keeps a principal of a federated "cluster.local" as written beside its
// local expansion: Istio reads "cluster.local" as the local trust domain,
// but a DENY naming the foreign cluster.local must still match its peers
// (never widen); Check reports the ambiguity.
func (o Options) principalSet(ps []string) []string {
	out := o.trustDomains().principals(ps)
	if o.TrustDomain.Name() == clusterLocal || !slices.Contains(o.FederatedTrustDomains, clusterLocal) {
		return out
	}
	for _, p := range ps {
		if strings.HasPrefix(p, clusterLocal+"/") && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// clusterLocal is Istio's default trust domain, which in a principal
// always means the local trust domain.
const clusterLocal = "cluster.local"

// principals expands source principals ("<td>/ns/<ns>/sa/<sa>") to every
// trust domain, as Istio's ReplaceTrustDomainAliases does; principals
// whose trust domain is "*", that are not of that shape, or whose trust
// domain is foreign stay as they are.
func (t trustDomains) principals(ps []string) []string {
	if len(ps) == 0 {
		return ps
	}
	var out []string
	for _, p := range ps {
		parts := strings.Split(p, "/")
		if len(parts) != 5 || parts[0] == "*" {
			out = append(out, p)
			continue
		}
		td := parts[0]
		if !t.covers(td) && td != clusterLocal {
			out = append(out, p)
			continue
		}
		var mine []string
		for _, d := range t {
			np := p
			if !suffixMatch(d, td) {
				np = d + "/" + strings.Join(parts[1:], "/")
			}
			if !slices.Contains(mine, np) {
				mine = append(mine, np)
			}
		}
		out = append(out, mine...)
	}
	return out
}

// domains expands trustDomains values naming one of t to all of t.
func (t trustDomains) domains(vs []string) []string {
	if len(vs) == 0 {
		return vs
	}
	var out []string
	for _, v := range vs {
		add := []string{v}
		if slices.Contains(t, v) {
			add = t
		}
		for _, a := range add {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// covers is Istio's loose match of a principal's trust domain against the
// list: exact, "*", or a prefix/suffix pattern on either side.
func (t trustDomains) covers(td string) bool {
	for _, s := range t {
		if td == s || s == "*" || prefixMatch(td, s) || prefixMatch(s, td) || suffixMatch(td, s) || suffixMatch(s, td) {
			return true
		}
	}
	return false
}

func prefixMatch(a, pattern string) bool {
	p, ok := strings.CutSuffix(pattern, "*")
	return ok && strings.HasPrefix(a, p)
}

func suffixMatch(a, pattern string) bool {
	p, ok := strings.CutPrefix(pattern, "*")
	return ok && strings.HasSuffix(a, p)
}
