package rbac

import (
	"fmt"
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
		}
	}
	return out
}
