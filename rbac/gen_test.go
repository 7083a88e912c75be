package rbac_test

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"reflect"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/rbac"
)

// gen makes random authorization policies over every field, action,
// wildcard form and not-form, and random requests to decide with them.
type gen struct{ r *rand.Rand }

func newGen(seed []byte) gen {
	var b [16]byte
	copy(b[:], seed)
	return gen{rand.New(rand.NewPCG(binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])))}
}

func (g gen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }

func (g gen) some(pool ...string) []string {
	if g.r.IntN(3) == 0 {
		return nil
	}
	n := 1 + g.r.IntN(2)
	out := make([]string, n)
	for i := range out {
		out[i] = g.pick(pool...)
	}
	return out
}

var (
	genPrincipals = []string{"cluster.local/ns/a/sa/x", "cluster.local/ns/b/*", "*/sa/x", "*", "other.td/ns/a/sa/x", "cluster.local/ns/test-1/sa/x"}
	genNamespaces = []string{"a", "b", "test-*", "*-ci", "*"}
	genSAs        = []string{"a/x", "x", "b/y"}
	genReqPrin    = []string{"iss-a/alice", "iss-a/*", "*/bob", "iss*", "*", "https://iss.example/alice", "plain"}
	genIPs        = []string{"10.0.0.0/8", "10.1.2.3", "192.168.0.0/16"}
	genTDs        = []string{"cluster.local", "other.td", "*.td", "*"}
	genHosts      = []string{"flaskapp.default", "*.example.com", "api.*", "*"}
	genPorts      = []string{"8080", "9090"}
	genMethods    = []string{"GET", "POST", "*", "DEL*"}
	genPaths      = []string{"/api/*", "/admin", "*/x", "/api/{*}/items", "/static/{**}", "*", "/admin*"}
	genWhen       = []struct {
		key  string
		pool []string
	}{
		{"request.headers[x-tenant]", []string{"acme", "*", "ac*"}},
		{"source.ip", genIPs}, {"remote.ip", genIPs},
		{"source.namespace", genNamespaces}, {"source.principal", genPrincipals},
		{"source.serviceAccount", genSAs}, {"source.trustDomain", genTDs},
		{"request.auth.principal", genReqPrin},
		{"request.auth.claims[groups]", []string{"admins", "users", "adm*"}},
		{"request.auth.audiences", []string{"flaskapp", "other"}},
		{"request.auth.presenter", []string{"web", "cli*"}},
		{"destination.port", genPorts}, {"destination.ip", []string{"10.9.0.0/16"}},
		{"connection.sni", []string{"flaskapp.default.svc", "*.svc"}},
	}
)

func (g gen) source() *api.Source {
	s := &api.Source{
		Principals: g.some(genPrincipals...), NotPrincipals: g.some(genPrincipals...),
		RequestPrincipals: g.some(genReqPrin...), NotRequestPrincipals: g.some(genReqPrin...),
		IPBlocks: g.some(genIPs...), NotIPBlocks: g.some(genIPs...),
		RemoteIPBlocks: g.some(genIPs...), NotRemoteIPBlocks: g.some(genIPs...),
		TrustDomains: g.some(genTDs...), NotTrustDomains: g.some(genTDs...),
	}
	// serviceAccounts cannot be combined with principals or namespaces.
	if g.r.IntN(4) == 0 {
		s.Principals, s.NotPrincipals = nil, nil
		s.ServiceAccounts, s.NotServiceAccounts = g.some(genSAs...), g.some(genSAs...)
		if len(s.ServiceAccounts)+len(s.NotServiceAccounts) == 0 {
			s.ServiceAccounts = []string{genSAs[0]}
		}
	} else {
		s.Namespaces, s.NotNamespaces = g.some(genNamespaces...), g.some(genNamespaces...)
	}
	if reflect.DeepEqual(*s, api.Source{}) {
		s.Namespaces = []string{g.pick(genNamespaces...)} // Istio refuses an empty source
	}
	return s
}

func (g gen) operation() *api.Operation {
	o := &api.Operation{
		Hosts: g.some(genHosts...), NotHosts: g.some(genHosts...),
		Ports: g.some(genPorts...), NotPorts: g.some(genPorts...),
		Methods: g.some(genMethods...), NotMethods: g.some(genMethods...),
		Paths: g.some(genPaths...), NotPaths: g.some(genPaths...),
	}
	if reflect.DeepEqual(*o, api.Operation{}) {
		o.Ports = []string{g.pick(genPorts...)} // Istio refuses an empty operation
	}
	return o
}

func (g gen) rule() api.Rule {
	var r api.Rule
	for i := g.r.IntN(3); i > 0; i-- {
		r.From = append(r.From, api.RuleFrom{Source: g.source()})
	}
	for i := g.r.IntN(3); i > 0; i-- {
		r.To = append(r.To, api.RuleTo{Operation: g.operation()})
	}
	for i := g.r.IntN(3); i > 0; i-- {
		w := genWhen[g.r.IntN(len(genWhen))]
		c := api.Condition{Key: w.key, Values: g.some(w.pool...), NotValues: g.some(w.pool...)}
		if len(c.Values)+len(c.NotValues) == 0 {
			c.Values = []string{w.pool[0]}
		}
		r.When = append(r.When, c)
	}
	return r
}

// policy is a random policy in ns; action "" picks one (no CUSTOM, whose
// decision belongs to an external server).
func (g gen) policy(ns, name, action string) *api.AuthorizationPolicy {
	if action == "" {
		action = g.pick("ALLOW", "DENY", "AUDIT", "ALLOW", "DENY")
	}
	p := &api.AuthorizationPolicy{
		TypeMeta: api.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"},
		Metadata: api.ObjectMeta{Name: name, Namespace: ns},
		Spec:     api.AuthorizationPolicySpec{Action: action},
	}
	if g.r.IntN(3) == 0 {
		p.Spec.Selector = &api.WorkloadSelector{MatchLabels: map[string]string{"app": g.pick("flaskapp", "sleep")}}
	}
	for i := g.r.IntN(3); i > 0 || (action == "DENY" && len(p.Spec.Rules) == 0); i-- {
		p.Spec.Rules = append(p.Spec.Rules, g.rule())
	}
	return p
}

func (g gen) policies(n int) []api.Object {
	var out []api.Object
	for i := 0; i < n; i++ {
		ns := g.pick("default", "default", "istio-system")
		out = append(out, g.policy(ns, fmt.Sprintf("p%d", i), ""))
	}
	return out
}

func (g gen) request() rbac.Request {
	r := rbac.Request{
		Principal: g.pick("spiffe://cluster.local/ns/a/sa/x", "spiffe://cluster.local/ns/b/sa/y", "spiffe://cluster.local/ns/test-1/sa/x", "spiffe://other.td/ns/a/sa/x", "spiffe://cluster.local/ns/default/sa/x", ""),
		SourceIP:  g.pick("10.1.2.3", "192.168.1.1", "172.16.0.1"),
		DestIP:    g.pick("10.9.1.1", "10.8.1.1"),
		DestPort:  uint32(8080 + 1010*g.r.IntN(2)),
		SNI:       g.pick("", "flaskapp.default.svc", "x.svc"),
		Method:    g.pick("GET", "POST", "DELETE"),
		Path:      g.pick("/api/1/items", "/admin", "/admin/x", "/static/a/b", "/x", "/", "/api/1/2/items"),
		Host:      g.pick("flaskapp.default", "www.example.com", "api.internal"),
		Headers:   map[string]string{},
	}
	if g.r.IntN(2) == 0 {
		r.Headers["x-tenant"] = g.pick("acme", "other")
	}
	if g.r.IntN(2) == 0 {
		r.JWT = map[string]any{
			"iss":    g.pick("iss-a", "https://iss.example", "iss-b", "plain"),
			"sub":    g.pick("alice", "bob", ""),
			"groups": []string{g.pick("admins", "users")},
			"aud":    g.pick("flaskapp", "other"),
			"azp":    g.pick("web", "cli-x"),
		}
	}
	return r
}
