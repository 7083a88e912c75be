package xds

import (
	"context"
	"errors"
	"fmt"
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
