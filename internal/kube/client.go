// Package kube is warden's only client-go user, with its subpackages,
// one per concern:
//
//   - kube/tokenreview: callers' identities, checked by TokenReview;
//   - kube/casecret: the CA's material in Secrets: istio-ca-secret,
//     created once, and the operator's cacerts, read at start and
//     followed;
//   - kube/rootcert: the trust bundle's copy in every namespace, the
//     istio-ca-root-cert ConfigMap (Publisher, written by the leader);
//   - kube/sasecrets: Citadel's istio.<sa> Secrets for every service
//     account (Controller, written by the leader);
//   - kube/leader: the election that picks which replica writes the
//     objects the replicas share;
//   - kube/meshconfig: the mesh configuration, informers decoding every
//     Istio kind warden reads (Watcher), and Snapshot, a one-off listing
//     for warden proxy-config and warden check;
//   - kube/registry: the service registry for xDS, from Services,
//     EndpointSlices and Pods (Watcher), turned into the xds model's
//     services;
//   - kube/gatewaycreds: gateways' TLS credentials, from the Secrets
//     their credentialName names (Watcher), and whether a gateway may
//     read them (SubjectAccessReview);
//   - kube/rotationstore: a root rotation's state, the operators'
//     requests and the replicas' reports, kept in the install's namespace.
//   - kube/webhook: Istio's validating admission webhook (Validator), and
//     the ValidatingWebhookConfigurations that call it (Configurations,
//     kept by the leader).
//
// This package holds what they share: clients at warden's rate limits
// (client.go), the reconcile Loop and informer helpers (loop.go), the
// owner Guard of the objects warden keeps in other namespaces
// (owner.go), and PEM helpers (pem.go).
//
// kube/kubetest runs a real API server for their tests, once per test
// binary; kube/e2e holds the end-to-end tests that drive warden itself
// against it.
//
// They import the pure xds model, never the ADS server.
package kube

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client QPS and burst. client-go's defaults (5 QPS, burst 10) throttle a
// CA when a node scale-up brings hundreds of workloads at once (Linkerd's
// identity service hit exactly this), so warden asks for far more; the API
// server's priority and fairness still protects it.
const (
	DefaultQPS   = 200
	DefaultBurst = 400
)

// RESTConfig loads a kubeconfig file, or the in-cluster configuration when
// path is empty, with warden's rate limits.
func RESTConfig(path string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: config: %w", err)
	}
	cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	cfg.UserAgent = "warden"
	return cfg, nil
}

// NewClientset makes a clientset from cfg.
func NewClientset(cfg *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	return cs, nil
}
