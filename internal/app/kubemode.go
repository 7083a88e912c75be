package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/server"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/fedrelations"
	"github.com/wardenmesh/warden/internal/kube/fedstore"
	"github.com/wardenmesh/warden/internal/kube/gatewaycreds"
	"github.com/wardenmesh/warden/internal/kube/leader"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
	"github.com/wardenmesh/warden/internal/kube/nodeauth"
	"github.com/wardenmesh/warden/internal/kube/podcache"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/kube/registry"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/kube/sasecrets"
	"github.com/wardenmesh/warden/internal/kube/tokenreview"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
	"github.com/wardenmesh/warden/internal/kube/webhook"
	"github.com/wardenmesh/warden/internal/metrics"
	"github.com/wardenmesh/warden/internal/rotation"
	"github.com/wardenmesh/warden/xds"
)

// kubeFlags select and configure Kubernetes mode.
type kubeFlags struct {
	on         bool
	kubeconfig string
	context    string
	namespace  string
	identity   string
	saSecrets  bool
	// podCertSigner is the pod-certificate signer's name; empty: no
	// signer and no ClusterTrustBundle.
	podCertSigner string
	// Node authorization (ambient's ztunnel).
	trustedNodeAccounts string
	clusterID           string
}

// defaultClusterID is istiod's default CLUSTER_ID, which ztunnel and
// Istio's agent send in their clusterid header unless told otherwise.
const defaultClusterID = "Kubernetes"

// register registers serve's Kubernetes flags: where the install is,
// and what this replica does in it.
func (k *kubeFlags) register(fs *flag.FlagSet, e *env) {
	k.registerInstall(fs, e)
	id := e.getenv("POD_NAME")
	if id == "" {
		id, _ = os.Hostname()
	}
	fs.StringVar(&k.identity, "replica-id", id, "this replica's name in leader election")
	fs.BoolVar(&k.saSecrets, "sa-secrets", false, "maintain Citadel-style istio.<sa> Secrets for every ServiceAccount (needs the RBAC of deploy/sa-secrets: writing Secrets in every namespace)")
	fs.StringVar(&k.trustedNodeAccounts, "trusted-node-accounts", nodeauth.DefaultTrusted, "the node proxies (Istio ambient's ztunnel), comma-separated <namespace>/<service account>: their xDS streams receive every workload and L4 policy of the mesh and, in Kubernetes mode, they may ask for the certificates of the pods on their node (istiod's CA_TRUSTED_NODE_ACCOUNTS); empty: none")
	fs.StringVar(&k.clusterID, "cluster-id", defaultClusterID, "Kubernetes mode: this cluster's ID, which node proxies name in their clusterid header (istiod's CLUSTER_ID)")
}

// xdsNodeAccounts are the trusted node accounts as the xDS server's
// ztunnel rule takes them.
func (k *kubeFlags) xdsNodeAccounts() (xds.NodeAccounts, error) {
	accounts, err := k.nodeAccounts()
	if err != nil {
		return nil, err
	}
	out := xds.NodeAccounts{}
	for _, a := range accounts {
		out[a.String()] = true
	}
	return out, nil
}

// nodeAccounts are the trusted node accounts, checked: a usage error
// names a bad entry (in every mode), or an empty --cluster-id (in
// Kubernetes mode, where they are used).
func (k *kubeFlags) nodeAccounts() ([]nodeauth.Account, error) {
	accounts, err := nodeauth.ParseAccounts(k.trustedNodeAccounts)
	if err != nil {
		return nil, fmt.Errorf("%w: --trusted-node-accounts: %v", errUsage, err)
	}
	if k.on && len(accounts) > 0 && k.clusterID == "" {
		return nil, fmt.Errorf("%w: --cluster-id is empty: node proxies name their cluster, and warden must know its own (istiod's default is %s)", errUsage, defaultClusterID)
	}
	return accounts, nil
}

// registerInstall registers the flags that find an install (serve's
// and check's): Kubernetes mode, the API server, warden's namespace.
func (k *kubeFlags) registerInstall(fs *flag.FlagSet, e *env) {
	fs.BoolVar(&k.on, "kubernetes", e.getenv("KUBERNETES_SERVICE_HOST") != "", "Kubernetes mode (default: on when running in a pod)")
	registerKubeconfig(fs, e, &k.kubeconfig, &k.context, "")
	ns := e.getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "warden-system"
	}
	fs.StringVar(&k.namespace, "namespace", ns, "namespace of warden's own Secrets (istio-ca-secret, cacerts) and Lease")
	fs.StringVar(&k.podCertSigner, "pod-certificate-signer", podcert.DefaultSigner, "signer name of warden's pod certificates (podCertificate volumes) and ClusterTrustBundle; the RBAC must name it (deploy/warden/rbac.yaml); empty: neither")
}

// checkPodCertificates refuses a signer name or trust domain the API
// server would refuse, naming the flag.
func (k *kubeFlags) checkPodCertificates(td spiffeid.TrustDomain) error {
	if k.podCertSigner == "" {
		return nil
	}
	if err := podcert.ValidateSignerName(k.podCertSigner); err != nil {
		return fmt.Errorf("%w: --pod-certificate-signer: %v", errUsage, err)
	}
	if err := trustbundle.Validate(k.podCertSigner, td.Name()); err != nil {
		return fmt.Errorf("%w: --trust-domain: %v (or turn pod certificates off: --pod-certificate-signer=\"\")", errUsage, err)
	}
	return nil
}

func (k *kubeFlags) enabled() bool { return k.on }

// registerKubeconfig adds --kubeconfig and --context, as kubectl has
// them (prefix says when they apply, e.g. "with --kubernetes: ").
func registerKubeconfig(fs *flag.FlagSet, e *env, kubeconfig, kubeContext *string, prefix string) {
	fs.StringVar(kubeconfig, "kubeconfig", e.getenv("KUBECONFIG"), prefix+"kubeconfig files, a list as in $KUBECONFIG (merged as kubectl merges them); empty means in-cluster")
	fs.StringVar(kubeContext, "context", "", prefix+"the kubeconfig context to use (default: its current context)")
}

// wireKubernetes loads CA material from the cluster (cacerts if present,
// else istio-ca-secret, created once), and schedules the watchers and the
// leader's writers. It returns the TokenReview authenticator.
func (s *controlPlane) wireKubernetes(ctx context.Context, f serveFlags, caCfg ca.Config, rootOpts ca.CAOptions, useVault bool) ([]server.Authenticator, error) {
	k := f.kube
	if err := k.checkPodCertificates(caCfg.TrustDomain); err != nil {
		return nil, err
	}
	logClientGoTo(s.log)
	rc, err := kube.RESTConfig(k.kubeconfig, k.context)
	if err != nil {
		return nil, err
	}
	if s.metrics != nil {
		kube.Instrument(rc, s.metrics.KubeRequest)
	}
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return nil, err
	}
	// With Vault the intermediate lives in memory only (a restarted
	// replica asks Vault again), so no CA Secret is read or written.
	var m *ca.Material
	plugged := false
	var leading atomic.Bool
	if useVault {
		// Each replica has its own intermediate, but the leader decides
		// for all: it reads Vault's issuers, publishes a new root,
		// activates it once every consumer holds it (the cluster's
		// copies, its own streams, and every other replica's from their
		// reports), and keeps the state in the rotation ConfigMap, which
		// every replica follows (a restarted one, or a new leader, too),
		// and its status for 'ca rotate --kubernetes --status'.
		rotStore := &rotationstore.Store{Client: cs, Namespace: k.namespace, Clock: caCfg.Clock}
		vr := vaultRotation{
			store:   &rotation.KubeUpstreamStore{Store: rotStore},
			leading: leading.Load,
			consumers: func() []bundle.Consumer {
				if leading.Load() {
					return s.consumers.All()
				}
				return s.consumers.Of(bundle.PerReplica)
			},
			report: func(ctx context.Context, st rotation.Status) bool {
				if !leading.Load() {
					return false
				}
				b, err := json.Marshal(st)
				if err == nil {
					err = rotStore.WriteStatus(ctx, b)
				}
				if err != nil {
					s.log.Error("upstream root rotation: writing the status for 'ca rotate --kubernetes --status'", "error", err.Error())
					return false
				}
				return true
			},
			wire: func(u *rotation.Upstream) { rotation.KubeUpstream(u, rotStore, k.identity, s.consumers) },
		}
		if err = s.wireVault(ctx, f, caCfg, rootOpts.KeyType, vr); err != nil {
			return nil, err
		}
	} else {
		if m, plugged, err = casecret.LoadPluggedIn(ctx, cs, k.namespace, caCfg.Clock.Now()); err != nil {
			return nil, err
		}
		s.origin = fmt.Sprintf("plugged-in CA from secret %s/%s", k.namespace, casecret.PluggedName)
		if plugged {
			err = casecret.RecordPluggedIn(ctx, cs, k.namespace, m)
		} else {
			err = casecret.CheckNotPluggedIn(ctx, cs, k.namespace)
		}
		if err != nil {
			return nil, err
		}
	}
	selfSigned := func(ctx context.Context) (*ca.Material, bool, error) {
		return ca.LoadOrCreate(ctx, &casecret.Store{Client: cs, Namespace: k.namespace}, caCfg.Clock, func() (*ca.Material, error) {
			return newRoot(rootOpts)
		})
	}
	var rotStore *rotationstore.Store
	if !useVault && !plugged {
		// A retirement a dead leader left half done is finished first.
		rotStore = &rotationstore.Store{Client: cs, Namespace: k.namespace, Clock: caCfg.Clock}
		if done, err := rotStore.FinishRetire(ctx); err != nil {
			return nil, fmt.Errorf("finishing a root rotation: %w", err)
		} else if done {
			s.log.Warn("finished a root rotation's retirement that a previous leader left half done")
		}
		var created bool
		m, created, err = selfSigned(ctx)
		if err != nil {
			return nil, err
		}
		s.origin = fmt.Sprintf("self-signed root from secret %s/%s", k.namespace, casecret.Name)
		if created {
			s.origin = fmt.Sprintf("new self-signed root stored in secret %s/%s", k.namespace, casecret.Name)
		}
	}
	if !useVault {
		if s.authority, err = ca.New(caCfg, m); err != nil {
			return nil, err
		}
	}
	bundle := func() []byte { return ca.EncodeCerts(s.authority.Bundle().X509Authorities()...) }
	if rotStore != nil {
		// The self-signed root rotates: the leader drives the steps, every
		// replica follows the state kept in the API server.
		rootOpts := rootOpts
		s.rotator = rotation.New(rotation.Config{Log: s.log, Authority: s.authority, CA: caCfg, Store: rotStore, Consumers: s.consumers,
			NewCA: func() (*ca.Material, error) { return newRoot(rootOpts) }, Grace: f.rotationGrace, AutoFraction: f.autoRotate,
			LoadCurrent: func(ctx context.Context) (*ca.Material, error) {
				files, err := (&casecret.Store{Client: cs, Namespace: k.namespace}).Load(ctx)
				if err != nil {
					return nil, err
				}
				return ca.DecodeMaterial(files, caCfg.Clock.Now())
			}})
		rotation.Kube(s.rotator, rotStore, k.identity)
		if err := s.rotator.Load(ctx, m); err != nil {
			return nil, err
		}
		s.tasks = append(s.tasks, s.rotator.Follow)
	}
	// The cluster's consumers of the trust bundle (the leader writes
	// them): the istio-ca-root-cert ConfigMaps and the istio.<sa> Secrets.
	hooks := webhookScope{keep: f.webhookListen != "", istiod: f.istiodNames}
	s.consumers.Add(clusterConsumers(cs, k, hooks, caCfg.TrustDomain, s.authority, caCfg.Clock, s.log, bundle, s.metrics)...)
	// The pod-certificate signer (the leader's): requests addressed to
	// it are checked against their pods and issued.
	// One watch of the cluster's pods per replica, run whether or not it
	// leads: the service registry, the node authorizer and the leader's
	// pod-certificate signer all read this cache.
	pods, err := podcache.New(cs, 0)
	if err != nil {
		return nil, err
	}
	s.tasks = append(s.tasks, pods.Run)
	var signer *podcert.Signer
	if k.podCertSigner != "" {
		signer = &podcert.Signer{Client: cs, Authority: s.authority, Name: k.podCertSigner, Log: s.log, Clock: caCfg.Clock, Pods: pods}
		if s.metrics != nil {
			signer.Observer = s.metrics.PodCertificates(podcert.Reasons, podcert.Causes, signer.Pending)
		}
	}
	watcher := &casecret.PluggedIn{Client: cs, Namespace: k.namespace, Authority: s.authority, Clock: caCfg.Clock, Log: s.log, Plugged: plugged,
		SelfSigned: func(ctx context.Context) (*ca.Material, error) { m, _, err := selfSigned(ctx); return m, err }}
	if s.metrics != nil {
		watcher.Invalid = s.metrics.PluggedInInvalid
	}
	s.fedStore = &fedstore.Store{Client: cs, Namespace: k.namespace, Clock: caCfg.Clock}
	election := &leader.Election{Client: cs, Namespace: k.namespace, Identity: k.identity, Log: s.log, Lead: func(ctx context.Context) {
		// The leader's work: the cluster's bundle copies, the rotation's
		// steps, and the pod certificates.
		leading.Store(true)
		defer leading.Store(false)
		var wg sync.WaitGroup
		if signer != nil {
			wg.Go(func() {
				if err := signer.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
					s.log.Error("leader task failed", "task", "pod certificates", "error", err.Error())
				}
			})
		}
		if s.rotator != nil {
			wg.Go(func() {
				if err := s.rotator.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
					s.log.Error("leader task failed", "task", "root rotation", "error", err.Error())
				}
			})
		}
		if s.federated != nil {
			// Only the leader polls the peers' bundle endpoints; every
			// replica reads what it stores (wireFederation). It writes
			// the ClusterFederatedTrustDomain objects' status.
			wg.Go(func() { _ = s.federated.Run(ctx) })
			wg.Go(func() { s.fedObjects.WriteStatus(ctx, s.federated.Status, f.federation.minRefresh) })
		}
		s.consumers.Lead(ctx, s.log)
		wg.Wait()
	}}
	if s.metrics != nil {
		s.metrics.Kube(election.Leading)
	}
	// Mesh configuration (every replica): decoded strictly, kept for the
	// policy compilers and the xDS server.
	dyn := dynamic.NewForConfigOrDie(rc)
	config := &meshconfig.Watcher{Client: dyn, Discovery: cs.Discovery(), Log: s.log}
	// Federation relationships from ClusterFederatedTrustDomain objects
	// (every replica; wireFederation hands them to the bundles).
	s.fedObjects = &fedrelations.Watcher{Client: dyn, Discovery: cs.Discovery(), Local: caCfg.TrustDomain, Log: s.log, Clock: caCfg.Clock}
	s.config = config
	s.registry = &registry.Watcher{Client: cs, Log: s.log, Pods: pods}
	s.gwCreds = &gatewaycreds.Watcher{Client: cs, Log: s.log}
	if !useVault {
		s.tasks = append(s.tasks, watcher.Run)
	}
	s.tasks = append(s.tasks, config.Run, s.registry.Run, func(ctx context.Context) error { election.Run(ctx); return nil })
	if err := s.wireNodeAuth(pods, k, caCfg.TrustDomain); err != nil {
		return nil, err
	}
	tr := &tokenreview.Authenticator{Client: cs, TrustDomain: caCfg.TrustDomain, Audiences: splitList(f.audiences), Clock: caCfg.Clock}
	if s.metrics != nil {
		tr.Observe = s.metrics.TokenReview
	}
	return []server.Authenticator{tr}, nil
}

// wireNodeAuth lets the trusted node accounts (ztunnel) ask for the
// certificates of the pods on their node, under istiod's node
// authorization; every replica indexes the pods of its pod cache for it.
// With no account trusted, the CA keeps SelfOnly and indexes nothing.
func (s *controlPlane) wireNodeAuth(podCache *podcache.Cache, k kubeFlags, td spiffeid.TrustDomain) error {
	trusted, err := k.nodeAccounts()
	if err != nil || len(trusted) == 0 {
		return err
	}
	pods := &nodeauth.Pods{Shared: podCache, Log: s.log}
	na := &nodeauth.Authorizer{Trusted: trusted, Cluster: k.clusterID, TrustDomain: td, Pods: pods}
	if s.metrics != nil {
		na.Observe = s.metrics.Impersonation
	}
	s.authorizer = na
	s.tasks = append(s.tasks, pods.Run)
	names := make([]string, len(trusted))
	for i, a := range trusted {
		names[i] = a.String()
	}
	s.log.Info("node authorization: these node proxies may ask for the certificates of the pods on their node", "accounts", strings.Join(names, ","), "cluster", k.clusterID)
	return nil
}

// webhookScope says whether the webhook configurations that call warden
// are a consumer of the bundle (serve with --webhook-listen; check
// always inspects them), and whether warden stands in istiod's place.
type webhookScope struct{ keep, istiod bool }

// clusterConsumers are the trust bundle's copies in the cluster, for
// serve (the leader writes them, a rotation waits for them) and for
// warden check (which inspects them): one list for both. pem is the
// bundle: the live one in serve, the one the copies should hold in
// check. m, when not nil, counts the owner guards' backoffs and the
// publish lag.
func clusterConsumers(cs kubernetes.Interface, k kubeFlags, hooks webhookScope, td spiffeid.TrustDomain, authority *ca.Authority, clock ca.Clock, log *slog.Logger, pem func() []byte, m *metrics.Registry) []bundle.Consumer {
	p := &rootcert.Publisher{Client: cs, Bundle: pem, Owner: k.namespace, Log: log}
	out := []bundle.Consumer{p}
	var sa *sasecrets.Controller
	if k.saSecrets {
		sa = &sasecrets.Controller{Client: cs, Authority: authority, Log: log, Clock: clock, Owner: k.namespace}
		out = append(out, sa)
	}
	if m != nil {
		p.OwnerConflict, p.Lag = m.OwnerConflict, m.BundlePublished
		if sa != nil {
			sa.OwnerConflict = m.OwnerConflict
		}
	}
	if hooks.keep {
		c := &webhook.Configurations{Client: cs, Bundle: pem, Warden: webhook.Ref{Namespace: k.namespace, Name: webhook.ServiceName}, Owner: k.namespace, Log: log}
		if hooks.istiod {
			c.Istiod = &webhook.IstiodService
		}
		out = append(out, c)
	}
	if k.podCertSigner != "" {
		out = append(out, &trustbundle.Publisher{Client: cs, SignerName: k.podCertSigner, TrustDomain: td.Name(), Bundle: pem, Owner: k.namespace, Log: log})
	}
	return out
}
