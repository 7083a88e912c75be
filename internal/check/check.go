// Package check answers "is this mesh configured sanely?" for warden
// check, in the spirit of istioctl analyze and linkerd check: the CA's
// material, the trust bundle's copies, the proxies' convergence, and the
// mesh configuration as the compilers see it. Each check yields results
// (ok, warning or error); the command exits non-zero on any error.
package check

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/authn"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/rbac"
	"github.com/wardenmesh/warden/xds"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// Status is a result's severity.
type Status string

// Statuses.
const (
	OK    Status = "ok"
	Warn  Status = "warning"
	Error Status = "error"
)

// Result is one finding.
type Result struct {
	Check   string `json:"check"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	// Items are every object a finding about many names (namespaces,
	// Secrets); its Message counts them and names the first ListLimit.
	Items []string `json:"items,omitempty"`
}

// ListLimit is how many names the message of a finding about many
// objects shows: a thousand namespaces are a count and a few examples on
// one line, and every name in -o json.
const ListLimit = 10

// Listed is a finding about items: format's one %s becomes their count
// and the first ListLimit of them ("1,011 namespaces: a, b, ... and
// 1,001 more"), noun being their singular name; Items holds them all.
func Listed(check string, s Status, items []string, noun, format string) Result {
	what := noun
	if len(items) != 1 {
		what += "s"
	}
	shown := items
	more := ""
	if len(items) > ListLimit {
		shown = items[:ListLimit]
		more = fmt.Sprintf(" and %s more", thousands(len(items)-ListLimit))
	}
	list := fmt.Sprintf("%s %s: %s%s", thousands(len(items)), what, strings.Join(shown, ", "), more)
	return Result{Check: check, Status: s, Message: fmt.Sprintf(format, list), Items: slices.Clone(items)}
}

// thousands writes n with a comma every three digits.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// Report is every finding, in the order the checks ran.
type Report []Result

// Failed says whether any result is an error.
func (r Report) Failed() bool {
	for _, x := range r {
		if x.Status == Error {
			return true
		}
	}
	return false
}

// Print writes the report for people: one line per result, then a count.
func (r Report) Print(w io.Writer) {
	counts := map[Status]int{}
	for _, x := range r {
		counts[x.Status]++
		mark := map[Status]string{OK: "ok     ", Warn: "WARNING", Error: "ERROR  "}[x.Status]
		fmt.Fprintf(w, "%s %-16s %s\n", mark, x.Check, x.Message)
	}
	fmt.Fprintf(w, "%d ok, %d warnings, %d errors\n", counts[OK], counts[Warn], counts[Error])
}

// JSON writes the report for scripts.
func (r Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{"results": r, "failed": r.Failed()})
}

func res(check string, s Status, format string, args ...any) Result {
	return Result{Check: check, Status: s, Message: fmt.Sprintf(format, args...)}
}

// CA checks CA material: the signing certificate chains to a root of the
// bundle, and no certificate of it has expired (error) or expires within
// warn (warning).
func CA(check string, m *ca.Material, now time.Time, warn time.Duration) []Result {
	var out []Result
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range m.Roots {
		roots.AddCert(r)
	}
	for _, c := range m.Chain {
		inter.AddCert(c)
	}
	if _, err := m.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		out = append(out, res(check, Error, "the signing certificate %q does not chain to the trust bundle: %v", m.Cert.Subject.String(), err))
	} else {
		out = append(out, res(check, OK, "the signing certificate %q chains to the trust bundle (%d root(s))", m.Cert.Subject.String(), len(m.Roots)))
	}
	certs := append([]*x509.Certificate{m.Cert}, m.Chain...)
	certs = append(certs, m.Roots...)
	seen := map[string]bool{}
	for _, c := range certs {
		fp := ca.Fingerprint(c)
		if seen[fp] {
			continue
		}
		seen[fp] = true
		left := c.NotAfter.Sub(now)
		switch {
		case left <= 0:
			out = append(out, res(check, Error, "%q expired at %s", c.Subject.String(), c.NotAfter.UTC().Format(time.RFC3339)))
		case left < warn:
			out = append(out, res(check, Warn, "%q expires in %s (%s): rotate it (docs/ca.md, Rotating the root)", c.Subject.String(), left.Round(time.Hour), c.NotAfter.UTC().Format(time.RFC3339)))
		default:
			out = append(out, res(check, OK, "%q valid until %s", c.Subject.String(), c.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	return out
}

// Proxies checks the running server's proxies: one that has not ACKed a
// push for longer than stale is an error.
func Proxies(status []xdsserver.ProxyStatus, now time.Time, stale time.Duration) []Result {
	var out []Result
	late := 0
	for _, p := range status {
		if len(p.Pending) > 0 && now.Sub(p.Since) > stale {
			late++
			types := make([]string, len(p.Pending))
			for i, t := range p.Pending {
				if types[i] = xds.ShortType(t); types[i] == "" {
					types[i] = t
				}
			}
			out = append(out, res("proxies", Error, "%s has not ACKed %s for %s", p.Node, strings.Join(types, ", "), now.Sub(p.Since).Round(time.Second)))
		}
	}
	if late == 0 {
		out = append(out, res("proxies", OK, "%d proxies connected, all ACKed their latest configuration", len(status)))
	}
	return out
}

// Policy checks the mesh configuration against the registry: the
// compilers' reports for every workload and every namespace's outbound
// view, and the authorization compiler's for every AuthorizationPolicy
// (rbac.Check: a request principal that cannot match among them)
// (warnings), objects whose selector matches no workload
// (warnings), routing that names hosts or subsets that do not exist
// (errors: calls to them fail), and clusters a workload's policy filters
// name that its proxy does not have (jwt_authn's: errors; ext_authz's:
// warnings).
func Policy(objs []api.Object, services []*xds.Service, opts xds.Options) ([]Result, error) {
	opts = opts.WithDefaults()
	mesh, err := xds.NewMesh(objs, services, opts)
	if err != nil {
		return nil, err
	}
	var out []Result
	reports := map[string]bool{}
	byHost := map[string]*xds.Service{}
	namespaces := map[string]bool{}
	type workload struct {
		ns     string
		labels map[string]string
	}
	var workloads []workload
	dangling := map[xds.Reference][]string{} // -> workloads
	var danglingOrder []xds.Reference
	for _, s := range services {
		byHost[s.Host] = s
		namespaces[s.Namespace] = true
		for i, e := range s.Endpoints {
			workloads = append(workloads, workload{s.Namespace, e.Labels})
			p := &xds.Proxy{Type: xds.SidecarProxy, IP: e.Address, Namespace: s.Namespace, ID: fmt.Sprintf("check~%s~%s-%d.%s", e.Address, s.Name, i, s.Namespace)}
			w := mesh.Workload(p)
			in, err := mesh.Inbound(w)
			if err != nil {
				out = append(out, res("policy", Error, "workload %s in %s: %v", e.Address, s.Namespace, err))
				continue
			}
			for _, r := range in.Reports {
				reports[r] = true
			}
			o, err := mesh.Outbound(mesh.ScopeOf(p, w))
			if err != nil {
				continue
			}
			for _, r := range o.Reports {
				reports[r] = true
			}
			// The proxy's clusters are its outbound and inbound ones; its
			// policy filters are in the inbound listener.
			refs, err := (&xds.Config{Listeners: in.Listeners, Clusters: slices.Concat(o.Clusters, in.Clusters)}).Dangling()
			if err != nil {
				out = append(out, res("clusters", Error, "workload %s in %s: %v", e.Address, s.Namespace, err))
				continue
			}
			for _, r := range refs {
				if dangling[r] == nil {
					danglingOrder = append(danglingOrder, r)
				}
				dangling[r] = append(dangling[r], s.Namespace+"/"+e.Address)
			}
		}
	}
	for _, r := range danglingOrder {
		out = append(out, danglingResult(r, dangling[r]))
	}
	for ns := range namespaces {
		if o, err := mesh.Outbound(xds.Scope{Namespace: ns, Generator: xds.GeneratorEnvoy}); err == nil {
			for _, r := range o.Reports {
				reports[r] = true
			}
		}
	}
	// Every AuthorizationPolicy's, those that select no workload yet
	// included (policy check prints the same).
	for _, r := range rbac.Check(objs, rbac.Options{RootNamespace: opts.RootNamespace, TrustDomain: opts.TrustDomain,
		TrustDomainAliases: opts.TrustDomainAliases, FederatedTrustDomains: opts.FederatedTrustDomains, PathNormalization: opts.PathNormalization}) {
		reports[r] = true
	}
	for _, r := range sortedKeys(reports) {
		out = append(out, res("policy", Warn, "%s", r))
	}
	selects := func(ns string, sel map[string]string) bool {
		for _, w := range workloads {
			if (ns == opts.RootNamespace || w.ns == ns) && matches(sel, w.labels) {
				return true
			}
		}
		return false
	}
	fqdn := func(h, ns string) string {
		if strings.Contains(h, ".") || h == "*" {
			return h
		}
		return fmt.Sprintf("%s.%s.svc.%s", h, ns, opts.Domain)
	}
	subsets := map[string]map[string]bool{} // host -> subset names
	for _, o := range objs {
		if dr, ok := o.(*api.DestinationRule); ok {
			h := fqdn(dr.Spec.Host, dr.Metadata.Namespace)
			if subsets[h] == nil {
				subsets[h] = map[string]bool{}
			}
			for _, s := range dr.Spec.Subsets {
				subsets[h][s.Name] = true
			}
		}
	}
	for _, o := range objs {
		kind := o.Type().Kind
		if kind == "" { // built in Go, without TypeMeta
			kind = strings.TrimPrefix(fmt.Sprintf("%T", o), "*api.")
		}
		id := kind + " " + o.Meta().Namespace + "/" + o.Meta().Name
		ns := o.Meta().Namespace
		sel := xds.Selector(o)
		switch x := o.(type) {
		case *api.Gateway:
			if len(sel) > 0 && !selects(opts.RootNamespace, sel) {
				out = append(out, res("policy", Warn, "%s: selector %s matches no workload in the registry: no gateway serves it", id, labelList(sel)))
			}
			sel = nil // Gateways select in every namespace: reported above
		case *api.DestinationRule:
			if h := fqdn(x.Spec.Host, ns); !strings.Contains(h, "*") && byHost[h] == nil {
				out = append(out, res("routing", Error, "%s: host %s is not in the service registry", id, h))
			}
		case *api.VirtualService:
			for _, d := range vsDestinations(x) {
				h := fqdn(d.Host, ns)
				switch {
				case byHost[h] == nil:
					out = append(out, res("routing", Error, "%s: destination host %s is not in the service registry: calls routed to it fail", id, h))
				case d.Subset != "" && !subsets[h][d.Subset]:
					out = append(out, res("routing", Error, "%s: destination %s subset %s is not defined by a DestinationRule: calls routed to it fail", id, h, d.Subset))
				}
			}
		}
		if len(sel) > 0 && !selects(ns, sel) {
			out = append(out, res("policy", Warn, "%s: selector %s matches no workload in the registry", id, labelList(sel)))
		}
	}
	if len(out) == 0 {
		out = append(out, res("policy", OK, "%d objects, %d services: no reports, no dangling selector or reference", len(objs), len(services)))
	}
	return out, nil
}

// danglingResult is the finding for a cluster the policy filters of
// workloads name and their proxies do not have: an error for jwt_authn
// (the issuer's tokens are refused), a warning for ext_authz (warden
// serves no ext-authz|<provider> cluster: the bootstrap must define it,
// which check cannot see).
func danglingResult(r xds.Reference, workloads []string) Result {
	who := workloads[0]
	if n := len(workloads); n > 1 {
		who = fmt.Sprintf("%s and %d other workload(s)", who, n-1)
	}
	if r.Filter == authn.JWTAuthnFilter {
		return res("clusters", Error, "jwt_authn of %s fetches the keys of %s through cluster %s, which its proxy does not have: tokens of that issuer are refused (401); name a service of the registry and one of its ports (docs/policy-authn.md), and let the proxy see it (Sidecar egress, exportTo)", who, r.What, r.Cluster)
	}
	return res("clusters", Warn, "%s of %s calls cluster %s for %s, which warden does not serve: the proxy's bootstrap must define it, or the requests the CUSTOM policy selects are refused (403)", r.Filter, who, r.Cluster, r.What)
}

// labelList prints labels as the --labels flags take them,
// app=flaskapp,version=v2 (keys sorted), never in Go's map syntax.
func labelList(m map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + m[k])
	}
	return b.String()
}

func matches(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func vsDestinations(v *api.VirtualService) []api.Destination {
	var out []api.Destination
	for _, r := range v.Spec.HTTP {
		for _, d := range r.Route {
			out = append(out, d.Destination)
		}
		if r.Mirror != nil {
			out = append(out, *r.Mirror)
		}
	}
	for _, r := range v.Spec.TCP {
		for _, d := range r.Route {
			out = append(out, d.Destination)
		}
	}
	for _, r := range v.Spec.TLS {
		for _, d := range r.Route {
			out = append(out, d.Destination)
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
