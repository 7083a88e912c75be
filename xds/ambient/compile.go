package ambient

import (
	"fmt"
	"net/netip"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi"
	"github.com/wardenmesh/warden/xds/ambient/workloadapi/security"
)

// Resource is one named resource of a Result.
type Resource struct {
	Name    string
	Message proto.Message // *workloadapi.Address or *security.Authorization
}

// Result is what ztunnel receives, each list sorted by name.
type Result struct {
	Addresses      []Resource
	Authorizations []Resource
	// ByIP maps "<network>/<ip>" to the Address resources (workloads
	// and services) with that address: the names ztunnel subscribes to
	// on demand.
	ByIP map[string][]string
	// Reports are what could not be compiled as written, each naming
	// its object.
	Reports []string
}

type compiler struct {
	in          Input
	namespaces  map[string]*Namespace
	peerAuths   []*api.PeerAuthentication
	selected    []*authorization          // policies attached by selector
	byNamespace map[string][]*serviceInfo // services that select pods
	endpointsOf map[string][]*serviceInfo // "ns/pod" -> services without a selector naming it
	reports     []string
}

func (c *compiler) report(format string, args ...any) {
	c.reports = append(c.reports, fmt.Sprintf(format, args...))
}

// Compile builds ztunnel's resources from the registry and the
// configuration, as istiod's ambient index does for the same objects.
// Every pod with an IP that has not terminated is a Workload (whether
// in ambient or not: ztunnel reaches the others in plain text, as their
// tunnel protocol says), every Service and ServiceEntry host a Service.
func Compile(in Input) *Result {
	in.fill()
	c := &compiler{in: in, namespaces: map[string]*Namespace{}, byNamespace: map[string][]*serviceInfo{}, endpointsOf: map[string][]*serviceInfo{}}
	for _, n := range in.Namespaces {
		c.namespaces[n.Name] = n
	}
	var aps []*api.AuthorizationPolicy
	var entries []*api.ServiceEntry
	for _, o := range in.Config {
		switch x := o.(type) {
		case *api.AuthorizationPolicy:
			aps = append(aps, x)
		case *api.PeerAuthentication:
			c.peerAuths = append(c.peerAuths, x)
		case *api.ServiceEntry:
			entries = append(entries, x)
		}
	}
	byKey := func(a, b api.Object) bool {
		return a.Meta().Namespace+"/"+a.Meta().Name < b.Meta().Namespace+"/"+b.Meta().Name
	}
	sort.Slice(aps, func(i, j int) bool { return byKey(aps[i], aps[j]) })
	sort.Slice(c.peerAuths, func(i, j int) bool { return byKey(c.peerAuths[i], c.peerAuths[j]) })
	sort.Slice(entries, func(i, j int) bool {
		ci, cj := entries[i].Metadata.Created(), entries[j].Metadata.Created()
		if !ci.Equal(cj) {
			return ci.Before(cj)
		}
		return byKey(entries[i], entries[j])
	})

	res := &Result{ByIP: map[string][]string{}}
	var auths []*authorization
	for _, p := range aps {
		if a := convertAuthorizationPolicy(in.RootNamespace, p, &c.reports); a != nil {
			auths = append(auths, a)
			if a.auth.Scope == security.Scope_WORKLOAD_SELECTOR && a.selector != nil {
				c.selected = append(c.selected, a)
			}
		}
	}
	nsLevel := map[string][]*api.PeerAuthentication{}
	for _, p := range c.peerAuths {
		if p.Spec.Selector == nil {
			nsLevel[p.Metadata.Namespace] = append(nsLevel[p.Metadata.Namespace], p)
		}
	}
	for _, p := range c.peerAuths {
		if a := convertPeerAuthentication(in.RootNamespace, p, oldestPA(nsLevel[p.Metadata.Namespace]), oldestPA(nsLevel[in.RootNamespace])); a != nil {
			auths = append(auths, a)
		}
	}
	if len(c.peerAuths) > 0 {
		auths = append(auths, &authorization{auth: staticStrict(in.RootNamespace)})
	}
	for _, a := range auths {
		res.Authorizations = append(res.Authorizations, Resource{Name: a.key(), Message: a.auth})
	}

	// Services: a Kubernetes Service owns its name; a ServiceEntry of
	// the same namespace and host is left out, as is a later entry's.
	svcs := map[string]*serviceInfo{}
	var order []*serviceInfo
	add := func(s *serviceInfo) {
		if prev, dup := svcs[s.key()]; dup {
			c.report("%s: host %s is already defined in namespace %s by %s; left out", s.source, s.svc.Hostname, s.svc.Namespace, prev.source)
			return
		}
		svcs[s.key()] = s
		order = append(order, s)
	}
	kube := append([]*Service(nil), in.Services...)
	sort.Slice(kube, func(i, j int) bool {
		return kube[i].Namespace+"/"+kube[i].Name < kube[j].Namespace+"/"+kube[j].Name
	})
	for _, s := range kube {
		if si := c.kubeService(s); si != nil {
			add(si)
			if s.Selector == nil {
				for _, pod := range s.Endpoints {
					k := s.Namespace + "/" + pod
					c.endpointsOf[k] = append(c.endpointsOf[k], si)
				}
			}
		}
	}
	entryServices := map[*api.ServiceEntry][]*serviceInfo{}
	for _, se := range entries {
		for _, si := range c.entryServices(se) {
			if _, dup := svcs[si.key()]; !dup {
				entryServices[se] = append(entryServices[se], si)
			}
			add(si)
		}
	}
	// One definition of a hostname is canonical across namespaces: the
	// Kubernetes Service's, else the oldest ServiceEntry's (Istio's
	// selectWorkloadServices); ztunnel resolves the name to it outside
	// the other definitions' namespaces.
	canonical := map[string]bool{}
	for _, s := range order {
		if s.svc.Canonical {
			canonical[s.svc.Hostname] = true
		}
	}
	for _, s := range order {
		if !canonical[s.svc.Hostname] {
			s.svc.Canonical, canonical[s.svc.Hostname] = true, true
		}
	}
	for _, s := range order {
		if len(s.selector) > 0 {
			c.byNamespace[s.svc.Namespace] = append(c.byNamespace[s.svc.Namespace], s)
		}
		name := s.key()
		res.Addresses = append(res.Addresses, Resource{Name: name, Message: &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s.svc}}})
		for _, a := range s.svc.Addresses {
			if a.Length == nil {
				res.index(a.Network, a.Address, name)
			}
		}
	}

	for _, p := range in.Pods {
		if w := c.podWorkload(p); w != nil {
			res.addWorkload(w)
		}
	}
	for _, se := range entries {
		if svcs := entryServices[se]; len(svcs) > 0 {
			for _, w := range c.entryWorkloads(se, svcs) {
				res.addWorkload(w)
			}
		}
	}
	sort.Slice(res.Addresses, func(i, j int) bool { return res.Addresses[i].Name < res.Addresses[j].Name })
	sort.Slice(res.Authorizations, func(i, j int) bool { return res.Authorizations[i].Name < res.Authorizations[j].Name })
	for k := range res.ByIP {
		sort.Strings(res.ByIP[k])
	}
	res.Reports = c.reports
	return res
}

func (r *Result) addWorkload(w *workloadapi.Workload) {
	r.Addresses = append(r.Addresses, Resource{Name: w.Uid, Message: &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}})
	for _, a := range w.Addresses {
		r.index(w.Network, a, w.Uid)
	}
}

func (r *Result) index(network string, addr []byte, name string) {
	a, ok := netip.AddrFromSlice(addr)
	if !ok {
		return
	}
	k := network + "/" + a.String()
	r.ByIP[k] = append(r.ByIP[k], name)
}
