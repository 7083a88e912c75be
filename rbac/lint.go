package rbac

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/wardenmesh/warden/api"
)

// requestPrincipalSplit finds the request principal that compiles but
// cannot be what its author meant: Istio splits "issuer/subject" at the
// last "/" (requestPrincipal), so in "https://issuer.example.com*", with
// no "/" after the host, the split falls inside the issuer's "://" and
// the value means issuer "https:/" and a subject starting
// "issuer.example.com" — no real token. The policy looks right and does
// nothing (ALLOW: admits nobody; DENY: denies nobody, or everybody under
// notRequestPrincipals). It returns "" for any other value, and otherwise
// says what the value means and the value to write.
func requestPrincipalSplit(v string) string {
	i := strings.LastIndex(v, "/")
	if i < 0 || strings.HasPrefix(v, "*") || !strings.HasSuffix(v[:i+1], "://") {
		return ""
	}
	iss, sub := v[:i], v[i+1:]
	host := strings.TrimSuffix(sub, "*")
	if host == "" || strings.Contains(host, "*") {
		return ""
	}
	issuer := v[:i+1] + host
	if strings.HasSuffix(sub, "*") {
		return fmt.Sprintf("%q means issuer %q and a subject starting %q (Istio splits issuer and subject at the last \"/\"), which no token has; "+
			"for any subject of issuer %s write %q", v, iss, host, issuer, issuer+"/*")
	}
	return fmt.Sprintf("%q means issuer %q and subject %q (Istio splits issuer and subject at the last \"/\"), which no token has; "+
		"write %q (one subject) or %q (any subject of issuer %s)", v, iss, sub, issuer+"/<subject>", issuer+"/*", issuer)
}

// lintRule reports the values of r that compile to something other than
// what they read as (requestPrincipalSplit), each as "<where>: <field>:
// <finding>" with where as the compiler's reports name the rule and its
// from entries.
func lintRule(where string, r api.Rule) []string {
	var out []string
	add := func(where, field string, values []string) {
		for _, v := range values {
			if m := requestPrincipalSplit(v); m != "" {
				out = append(out, fmt.Sprintf("%s: %s: %s", where, field, m))
			}
		}
	}
	for i, f := range r.From {
		if f.Source == nil {
			continue
		}
		w := where
		if len(r.From) > 1 {
			w = fmt.Sprintf("%s from[%d]", where, i)
		}
		add(w, "source.requestPrincipals", f.Source.RequestPrincipals)
		add(w, "source.notRequestPrincipals", f.Source.NotRequestPrincipals)
	}
	for i, c := range r.When {
		if c.Key == "request.auth.principal" {
			add(where, fmt.Sprintf("when[%d].request.auth.principal values", i), c.Values)
			add(where, fmt.Sprintf("when[%d].request.auth.principal notValues", i), c.NotValues)
		}
	}
	return out
}

// Check is the compiler's reports for every AuthorizationPolicy in objs,
// each compiled as if it selected a workload (HTTP) — what a policy
// means does not depend on the workload it selects — so a policy is
// reported even when it selects no workload yet: values warden cannot
// express, rules dropped, and values that compile to something other
// than they read as. Legacy RBAC, which applies per workload, is left
// to Compile. policy check and warden check print these.
func Check(objs []api.Object, opts Options) []string {
	opts.fill()
	opts.TCP = false
	var out []string
	for _, o := range objs {
		if p, ok := o.(*api.AuthorizationPolicy); ok {
			compilePolicy(p, opts, &out)
			for i, r := range p.Spec.Rules {
				out = append(out, lintTrustDomains("AuthorizationPolicy "+p.Metadata.Namespace+"/"+p.Metadata.Name+" rule "+strconv.Itoa(i), r, opts)...)
			}
		}
	}
	return out
}

// lintTrustDomains reports the values of r that name a trust domain no
// peer can present: neither the mesh's, an alias, "cluster.local" (the
// local trust domain to Istio) nor a federated one; most likely a typo,
// and the value never matches (an ALLOW admits nobody by it, a DENY
// denies nobody). Values with a "*" in the trust domain are left alone.
// With a federated "cluster.local" beside another local trust domain, a
// principal naming cluster.local is reported as ambiguous: it matches
// the local workload (Istio) and the foreign one (as written).
func lintTrustDomains(where string, r api.Rule, opts Options) []string {
	known := append(opts.trustDomains(), clusterLocal)
	known = append(known, opts.FederatedTrustDomains...)
	ambiguous := opts.TrustDomain.Name() != clusterLocal && slices.Contains(opts.FederatedTrustDomains, clusterLocal)
	var out []string
	check := func(where, field string, values []string, principals bool) {
		for _, v := range values {
			td := v
			if principals {
				var ok bool
				if td, _, ok = strings.Cut(v, "/"); !ok {
					continue
				}
			}
			switch {
			case td == "" || strings.Contains(td, "*"):
			case !slices.Contains(known, td):
				out = append(out, fmt.Sprintf("%s: %s: %q names trust domain %q, which is neither the mesh's (%s), an alias, nor a federated trust domain: no peer presents it, so the value never matches; "+
					"check its spelling, or federate with %s (serve --federation-file, or a ClusterFederatedTrustDomain in Kubernetes)", where, field, v, td, opts.TrustDomain.Name(), td))
			case principals && ambiguous && td == clusterLocal:
				out = append(out, fmt.Sprintf("%s: %s: %q matches both the local workload (Istio reads cluster.local as the mesh's trust domain, %s) and the federated trust domain cluster.local's; "+
					"to name the local one alone write %q", where, field, v, opts.TrustDomain.Name(), opts.TrustDomain.Name()+strings.TrimPrefix(v, clusterLocal)))
			}
		}
	}
	for i, f := range r.From {
		if f.Source == nil {
			continue
		}
		w := where
		if len(r.From) > 1 {
			w = fmt.Sprintf("%s from[%d]", where, i)
		}
		check(w, "source.principals", f.Source.Principals, true)
		check(w, "source.notPrincipals", f.Source.NotPrincipals, true)
		check(w, "source.trustDomains", f.Source.TrustDomains, false)
		check(w, "source.notTrustDomains", f.Source.NotTrustDomains, false)
	}
	for i, c := range r.When {
		switch c.Key {
		case "source.principal", "source.trustDomain":
			check(where, fmt.Sprintf("when[%d].%s values", i, c.Key), c.Values, c.Key == "source.principal")
			check(where, fmt.Sprintf("when[%d].%s notValues", i, c.Key), c.NotValues, c.Key == "source.principal")
		}
	}
	return out
}
