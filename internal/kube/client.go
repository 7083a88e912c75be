// Package kube is warden's only client-go user, with its subpackages,
// one per concern:
//
//   - kube/tokenreview: callers' identities, checked by TokenReview;
//   - kube/nodeauth: which pods run on a node proxy's node, for the
//     certificates ztunnel asks for on their behalf (istiod's node
//     authorization);
//   - kube/casecret: the CA's material in Secrets: istio-ca-secret,
//     created once, and the operator's cacerts, read at start and
//     followed;
//   - kube/rootcert: the trust bundle's copy in every namespace, the
//     istio-ca-root-cert ConfigMap (Publisher, written by the leader);
//   - kube/sasecrets: Citadel's istio.<sa> Secrets for every service
//     account (Controller, written by the leader);
//   - kube/leader: the election that picks which replica writes the
//     objects the replicas share;
//   - kube/access: what serve does in the API server, and whether a
//     service account may (SubjectAccessReview), for warden check;
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
//     kept by the leader);
//   - kube/podcert: warden as a pod-certificate signer (Signer, the
//     leader's): PodCertificateRequests checked against their pods and
//     issued;
//   - kube/trustbundle: the trust bundle as a ClusterTrustBundle linked
//     to that signer (Publisher, written by the leader);
//   - kube/fedstore: the foreign trust domains' bundles in a ConfigMap
//     (written by the leader, read by every replica);
//   - kube/fedrelations: federation relationships from
//     ClusterFederatedTrustDomain objects (Watcher, every replica; their
//     status written by the leader).
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
	"os"
	"path/filepath"
	"strings"

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

// RESTConfig loads the API server's address and credentials as kubectl
// does: kubeconfig is a list of files separated as $KUBECONFIG is (":" on
// Unix), merged by client-go's loading rules (the first file to set a
// value wins, current-context included), and kubeContext, when set, picks
// a context instead of the current one. With neither, warden runs in a
// pod and uses the in-cluster configuration. warden's rate limits apply.
func RESTConfig(kubeconfig, kubeContext string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" && kubeContext == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kube: config: %w (outside a pod, name a kubeconfig with --kubeconfig or $KUBECONFIG)", err)
		}
	} else if cfg, err = loadKubeconfig(kubeconfig, kubeContext); err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	cfg.UserAgent = "warden"
	return cfg, nil
}

// loadKubeconfig merges the files of a $KUBECONFIG-style list (the
// recommended ~/.kube/config when the list is empty) and picks
// kubeContext, or the merged current context.
func loadKubeconfig(list, kubeContext string) (*rest.Config, error) {
	files := filepath.SplitList(list)
	if len(files) == 0 {
		files = []string{clientcmd.RecommendedHomeFile}
	}
	found := false
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("kube: config: no kubeconfig file exists among %s", strings.Join(files, string(filepath.ListSeparator)))
	}
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: files}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kube: config %s: %w", strings.Join(files, string(filepath.ListSeparator)), err)
	}
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
