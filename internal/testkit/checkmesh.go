package testkit

import "strings"

// CheckFindingsYAML is mesh configuration in namespace ns with one of each
// thing 'warden check' reports about routing and policy, for its tests in
// standalone and Kubernetes mode: a VirtualService for host routing to a
// misspelt host (typo), an undefined subset and a rule delegating to
// another VirtualService (a field warden reports and does not compile); a
// DestinationRule for a host that does not exist (ghost); an
// AuthorizationPolicy whose selector matches nothing (app: flask); and two
// namespace-wide PeerAuthentications that disagree.
func CheckFindingsYAML(ns, host, typo string) string {
	return strings.NewReplacer("NS", ns, "HOST", host, "TYPO", typo).Replace(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes, namespace: NS}
spec:
  hosts: [HOST]
  http:
  - route: [{destination: {host: TYPO}}]
  - route: [{destination: {host: HOST, subset: v9}}]
  - delegate: {name: more-routes, namespace: NS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ghost, namespace: NS}
spec: {host: ghost}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: NS}
spec:
  selector: {matchLabels: {app: flask}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: NS}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: NS}
spec: {mtls: {mode: PERMISSIVE}}
`)
}
