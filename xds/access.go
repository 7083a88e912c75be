package xds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrNotAuthorized wraps every refusal of MayServe.
var ErrNotAuthorized = errors.New("not authorized")

// MayServe decides whether a stream authenticated as id may receive the
// configuration of proxy p, whose workload the registry knows as w (the
// mesh's Workload(p)). It is the one rule for every xDS stream, checked
// when a stream binds to its node and again whenever the configuration
// it would receive is built, so that a stream whose workload changed
// under it (a ServiceEntry edited, a pod's IP reused) is refused before
// anything of the new workload reaches it.
//
//   - A workload the registry knows runs as exactly one identity: its
//     service account's SPIFFE ID. Only a stream of that identity may
//     have its configuration.
//   - A workload the registry does not know (its IP is in no endpoint of
//     its namespace yet) has no labels, ports or service account: a
//     stream of any identity of the node's namespace may have what such
//     a proxy gets, which is the namespace's outbound configuration
//     (what every workload there may call) and the secrets of the
//     stream's own identity. Nothing in it belongs to another workload.
//   - A gateway (router) must be a workload the registry knows: its
//     listeners enforce the policies that select its labels, and its
//     credentials are private keys; an unknown router would match every
//     Gateway with an empty selector and carry no policy.
func MayServe(id spiffeid.ID, p *Proxy, w *Workload, td spiffeid.TrustDomain) error {
	if w.Known {
		want, err := w.ID(td)
		if err != nil {
			return fmt.Errorf("%w: node %s: %v", ErrNotAuthorized, p.ID, err)
		}
		if id != want {
			return fmt.Errorf("%w: this stream is authenticated as %s and cannot receive the configuration of node %s, which runs as %s", ErrNotAuthorized, id, p.ID, want)
		}
		return nil
	}
	if p.Type == RouterProxy {
		return fmt.Errorf("%w: gateway node %s: no workload at %s in namespace %s is registered, so the gateway's labels, service account and policies are unknown; register it (a Service selecting the gateway pod, or a ServiceEntry endpoint with its labels and serviceAccount)", ErrNotAuthorized, p.ID, p.IP, p.Namespace)
	}
	ns, _, ok := workloadNamespace(id, td)
	if !ok || ns != p.Namespace {
		return fmt.Errorf("%w: this stream is authenticated as %s and cannot receive the configuration of node %s in namespace %s", ErrNotAuthorized, id, p.ID, p.Namespace)
	}
	return nil
}

// workloadNamespace reads spiffe://<td>/ns/<ns>/sa/<sa>.
func workloadNamespace(id spiffeid.ID, td spiffeid.TrustDomain) (ns, sa string, ok bool) {
	segs := strings.Split(id.Path(), "/")
	if id.TrustDomain() != td || len(segs) != 5 || segs[1] != "ns" || segs[3] != "sa" || segs[2] == "" || segs[4] == "" {
		return "", "", false
	}
	return segs[2], segs[4], true
}

// SecretAccess says whether a service account may read the Secrets of a
// namespace: in Kubernetes mode a SubjectAccessReview (may it list
// secrets there, as istiod asks), in standalone mode the namespace's
// grants in --credentials-dir. It returns nil when it may, an error
// wrapping ErrNotAuthorized when it may not (naming the fix), and any
// other error when it could not tell.
type SecretAccess interface {
	MayReadSecrets(ctx context.Context, namespace, serviceAccount string) error
}

// MayReceiveCredential decides whether a stream authenticated as id,
// serving gateway proxy p, may receive the Gateway credentials (TLS keys
// from Secrets) of namespace ns: only a gateway's own namespace, only a
// gateway running as a service account of that namespace, and only
// when that service account may read the namespace's Secrets itself, so
// that opening ADS as a gateway gives no key its identity could not read
// from the API server.
func MayReceiveCredential(ctx context.Context, access SecretAccess, id spiffeid.ID, p *Proxy, ns string, td spiffeid.TrustDomain) error {
	if p.Type != RouterProxy {
		return fmt.Errorf("%w: node %s is not a gateway; only gateways receive Gateway credentials", ErrNotAuthorized, p.ID)
	}
	if ns != p.Namespace {
		return fmt.Errorf("%w: gateway %s is in namespace %s; credentials of namespace %s are not served to it", ErrNotAuthorized, p.ID, p.Namespace, ns)
	}
	idNS, sa, ok := workloadNamespace(id, td)
	if !ok || idNS != ns {
		return fmt.Errorf("%w: %s is not a service account of namespace %s", ErrNotAuthorized, id, ns)
	}
	if access == nil {
		return fmt.Errorf("%w: no access rule for credentials is configured", ErrNotAuthorized)
	}
	return access.MayReadSecrets(ctx, ns, sa)
}

// NodeAccounts is the set of service accounts ("<namespace>/<name>")
// whose workloads are node proxies trusted with the whole mesh's
// workloads and policies: ztunnel's (Istio's CA_TRUSTED_NODE_ACCOUNTS,
// default istio-system/ztunnel).
type NodeAccounts map[string]bool

// ZtunnelPod is the registry's view of the pod a ztunnel node ID names.
type ZtunnelPod struct {
	Known          bool // the registry has a pod of that name
	ServiceAccount string
	IPs            []string
}

// MayServeZtunnel decides whether a stream authenticated as id may be
// served as ztunnel node p, as istiod decides for ztunnel's streams:
//
//   - id must be a SPIFFE ID of the mesh's trust domain whose
//     namespace/service account is a trusted node account;
//   - the node ID's namespace must be id's;
//   - when the registry knows the node ID's pod, it must run as id's
//     service account at the node ID's IP, so that a stream cannot stand
//     for another pod.
//
// Checked when the stream opens and whenever the registry changes: a
// stream whose pod now runs as another account, or elsewhere, is ended.
func MayServeZtunnel(id spiffeid.ID, p *Proxy, pod ZtunnelPod, trusted NodeAccounts, td spiffeid.TrustDomain) error {
	ns, sa, ok := workloadNamespace(id, td)
	if !ok {
		return fmt.Errorf("%w: %s is not a workload identity of trust domain %s; ztunnel streams must be opened as a trusted node account", ErrNotAuthorized, id, td)
	}
	if !trusted[ns+"/"+sa] {
		return fmt.Errorf("%w: %s/%s is not a trusted node account (--trusted-node-accounts %s); only ztunnel's service account receives the mesh's workloads and policies", ErrNotAuthorized, ns, sa, trusted)
	}
	if p.Namespace != ns {
		return fmt.Errorf("%w: node %s is in namespace %s, but this stream is authenticated as %s", ErrNotAuthorized, p.ID, p.Namespace, id)
	}
	if pod.Known {
		if pod.ServiceAccount != sa {
			return fmt.Errorf("%w: pod %s/%s of node %s runs as service account %s, not %s", ErrNotAuthorized, p.Namespace, p.Pod, p.ID, pod.ServiceAccount, sa)
		}
		if !slices.Contains(pod.IPs, p.IP) {
			return fmt.Errorf("%w: pod %s/%s of node %s is not at %s (its addresses: %s)", ErrNotAuthorized, p.Namespace, p.Pod, p.ID, p.IP, strings.Join(pod.IPs, ", "))
		}
	}
	return nil
}

// String lists the accounts, sorted, comma-separated.
func (n NodeAccounts) String() string {
	l := make([]string, 0, len(n))
	for a := range n {
		l = append(l, a)
	}
	slices.Sort(l)
	return strings.Join(l, ",")
}
