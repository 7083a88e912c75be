package app

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/wardenmesh/warden/api"
	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/filestore"
	"github.com/wardenmesh/warden/federation"
	"github.com/wardenmesh/warden/internal/bundle"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube"
	"github.com/wardenmesh/warden/internal/kube/access"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/fedrelations"
	"github.com/wardenmesh/warden/internal/kube/leader"
	"github.com/wardenmesh/warden/internal/kube/meshconfig"
	"github.com/wardenmesh/warden/internal/kube/podcert"
	"github.com/wardenmesh/warden/internal/kube/rotationstore"
	"github.com/wardenmesh/warden/internal/kube/trustbundle"
	"github.com/wardenmesh/warden/internal/source"
	"github.com/wardenmesh/warden/xds"
	xdsserver "github.com/wardenmesh/warden/xds/server"
)

// runCheck is warden check: the CA, the trust bundle's copies, the
// proxies and the mesh configuration, in standalone or Kubernetes mode.
func runCheck(ctx context.Context, e *env, args []string) error {
	fs := e.flags("check")
	dataDir := fs.String("data-dir", e.dataDirDefault(), "standalone: the data directory of warden serve")
	plugged := fs.String("plugged-in-dir", "", "standalone: check this plugged-in CA directory (cacerts) instead of the data directory's CA")
	configDir := fs.String("config-dir", "", "standalone: the mesh configuration directory warden serve reads")
	server := fs.String("server", e.getenv("WARDEN_HTTP_ADDR"), "a running warden serve's HTTP port (its --http-listen, e.g. 127.0.0.1:15014; env WARDEN_HTTP_ADDR), not its CA port: check its proxies' convergence")
	output := fs.String("o", "", "output: empty for people, json for scripts")
	warn := fs.Duration("expiry-warning", 30*24*time.Hour, "warn about CA certificates expiring sooner than this")
	stale := fs.Duration("stale-after", time.Minute, "a proxy that has not ACKed a push for this long is an error")
	// Only the flags check reads: where the install is, and the mesh
	// settings its findings depend on, which must be serve's.
	serviceAccount := fs.String("service-account", "", "Kubernetes: the service account warden serve runs as, whose RBAC is checked (default: the leader's pod's, else warden)")
	var k kubeFlags
	k.registerInstall(fs, e)
	fs.BoolVar(&k.saSecrets, "sa-secrets", false, "Kubernetes: also check the istio.<sa> Secrets (an install whose serve runs with --sa-secrets)")
	pcrPending := fs.Duration("pod-certificate-pending", time.Minute, "Kubernetes: a pod certificate request pending for longer than this is an error")
	trustDomain := fs.String("trust-domain", defaultTrustDomain, "the mesh's SPIFFE trust domain, as serve's --trust-domain (its --trust-domain-alias are aliases of it)")
	var mf meshPolicyFlags
	mf.registerPolicy(fs)
	fedFile := fs.String("federation-file", "", "serve's --federation-file (without --kubernetes, or the ClusterFederatedTrustDomain objects as kubectl get -o yaml writes them): the federated trust domains, which policies may name (a policy naming any other foreign trust domain is reported)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *output != "" && *output != "json" {
		return fmt.Errorf("%w: -o %q: want json or nothing", errUsage, *output)
	}
	if err := mf.check(); err != nil {
		return err
	}
	td, err := parseTrustDomain(*trustDomain)
	if err != nil {
		return err
	}
	fileRels, federated, err := federatedTrustDomains(*fedFile, td, !k.enabled())
	if err != nil {
		return err
	}
	now := time.Now()
	var report check.Report
	var objs []api.Object
	var services []*xds.Service
	if k.enabled() {
		var err error
		if objs, services, err = checkKubernetes(ctx, &report, k, td, *serviceAccount, now, *warn, *pcrPending); err != nil {
			return err
		}
		var res []check.Result
		federated, res = checkFederationObjects(ctx, k, td, fileRels, federated)
		report = append(report, res...)
	} else {
		checkStandaloneCA(&report, *dataDir, *plugged, now, *warn)
		if *configDir != "" {
			objs, services = checkConfigDir(&report, *configDir)
		}
	}
	if objs != nil || services != nil {
		res, err := check.Policy(objs, services, xds.Options{TrustDomain: td, TrustDomainAliases: mf.aliases, FederatedTrustDomains: federated, PathNormalization: mf.pathNorm, RootNamespace: mf.rootNS})
		if err != nil {
			report = append(report, check.Result{Check: "policy", Status: check.Error, Message: err.Error()})
		}
		report = append(report, res...)
	}
	if *server != "" {
		status, err := proxyStatus(ctx, *server)
		if err != nil {
			report = append(report, check.Result{Check: "proxies", Status: check.Error, Message: err.Error()})
		} else {
			report = append(report, check.Proxies(status, now, *stale)...)
		}
		report = append(report, checkFederation(ctx, *server)...)
	}
	if *output == "json" {
		if err := report.JSON(e.stdout); err != nil {
			return err
		}
	} else {
		report.Print(e.stdout)
	}
	if report.Failed() {
		return errors.New("some checks failed")
	}
	return nil
}

// checkConfigDir reports every problem of every file of a --config-dir,
// each a result (serve refuses the directory until they are fixed), and
// returns its valid objects and services for the policy checks.
func checkConfigDir(report *check.Report, dir string) ([]api.Object, []*xds.Service) {
	l, err := source.LoadAll(dir)
	if err != nil {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: err.Error()})
		return nil, nil
	}
	for _, p := range l.Problems {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: p.Error()})
	}
	services, err := xds.ServicesFromEntries(l.Objects, "")
	if err != nil {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: err.Error()})
		return l.Objects, nil
	}
	if len(l.Problems) == 0 {
		*report = append(*report, check.Result{Check: "config", Status: check.OK, Message: fmt.Sprintf("%s: %d objects, %d services", dir, len(l.Objects), len(services))})
	}
	return l.Objects, services
}

func checkStandaloneCA(report *check.Report, dataDir, plugged string, now time.Time, warn time.Duration) {
	var m *ca.Material
	var err error
	what := "ca"
	switch {
	case plugged != "":
		what = "cacerts"
		m, err = filestore.LoadPluggedIn(plugged, now)
	default:
		var f ca.Files
		if f, err = (&filestore.Store{Dir: dataDir}).Load(context.Background()); err == nil {
			m, err = ca.DecodeMaterial(f, now)
		} else if b, rerr := os.ReadFile(filepath.Join(dataDir, ca.FileRootCert)); rerr == nil {
			// Vault mode keeps only the bundle in the data directory.
			roots, perr := ca.ParseCerts(b)
			if perr == nil && len(roots) > 0 {
				m, err = &ca.Material{Cert: roots[0], Roots: roots}, nil
				what = "bundle"
			}
		}
	}
	if err != nil {
		*report = append(*report, check.Result{Check: what, Status: check.Error, Message: err.Error()})
		return
	}
	*report = append(*report, check.CA(what, m, now, warn)...)
}

// checkKubernetes checks an install: its CA Secret, the bundle's copies
// (ConfigMaps, the istio.<sa> Secrets, the ClusterTrustBundle), its
// leader, what its service account (sa, or the leader's pod's) may do,
// the pod certificate requests and the configuration objects; it
// returns the configuration and registry for the policy checks.
func checkKubernetes(ctx context.Context, report *check.Report, k kubeFlags, td spiffeid.TrustDomain, sa string, now time.Time, warn, pcrPending time.Duration) ([]api.Object, []*xds.Service, error) {
	rc, err := kube.RESTConfig(k.kubeconfig, k.context)
	if err != nil {
		return nil, nil, err
	}
	cs, err := kube.NewClientset(rc)
	if err != nil {
		return nil, nil, err
	}
	var fp string                    // the root workload certificates chain to
	var expected []*x509.Certificate // the roots the bundle's copies should hold
	m, which, err := casecret.Load(ctx, cs, k.namespace, now)
	recorded, plugged, rerr := casecret.PluggedInRecord(ctx, cs, k.namespace)
	switch {
	case which != casecret.PluggedName && plugged:
		// cacerts is gone and its record is there: the replicas running
		// sign with the CA they hold, as serve says (and refuses to
		// start); istio-ca-secret is not what they use.
		*report = append(*report, check.Result{Check: "ca", Status: check.Error, Message: casecret.PluggedInGone(k.namespace, recorded).Error()})
		fp = recorded
	case err != nil:
		*report = append(*report, check.Result{Check: "ca", Status: check.Error, Message: err.Error()})
	default:
		*report = append(*report, check.CA("ca "+which, m, now, warn)...)
		fp = ca.Fingerprint(signingRoot(m))
		// The bundle the copies should hold: the CA's roots, and the
		// prepared CA's too during a rotation's overlap.
		expected = m.Roots
		st, next, rotating, err := (&rotationstore.Store{Client: cs, Namespace: k.namespace, Clock: ca.SystemClock{}}).Load(ctx)
		switch {
		case err != nil:
			*report = append(*report, check.Result{Check: "rotation", Status: check.Error, Message: err.Error()})
		case rotating && (st.Phase == ca.PhasePublished || st.Phase == ca.PhaseActivated):
			expected = ca.MergeRoots(expected, next.Roots)
		}
	}
	if rerr != nil {
		*report = append(*report, check.Result{Check: "ca", Status: check.Error, Message: rerr.Error()})
	}
	if fp != "" {
		var pem func() []byte
		if expected != nil {
			pem = func() []byte { return ca.EncodeCerts(expected...) }
		}
		// The cluster's copies of the bundle: the same list serve writes
		// and a rotation waits for.
		set := &bundle.Set{}
		set.Add(clusterConsumers(cs, k, webhookScope{keep: true}, td, nil, ca.SystemClock{}, slog.New(slog.DiscardHandler), pem, nil)...)
		*report = append(*report, set.Check(ctx, fp, now)...)
	}
	*report = append(*report, leader.Check(ctx, cs, k.namespace, now))
	if sa == "" {
		sa = serveServiceAccount(ctx, cs, k.namespace)
	}
	rules := access.Required(k.namespace, k.saSecrets)
	if k.podCertSigner != "" {
		rules = append(rules, access.PodCertificates(k.podCertSigner, trustbundle.Name(k.podCertSigner, td.Name()))...)
	}
	*report = append(*report, access.Check(ctx, cs, k.namespace, sa, rules)...)
	if k.podCertSigner != "" {
		*report = append(*report, podcert.Check(ctx, cs, k.podCertSigner, now, pcrPending)...)
	}
	objs, cluster, rejected, err := meshconfig.Snapshot(ctx, rc, 30*time.Second)
	if err != nil {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: err.Error()})
		return nil, nil, nil
	}
	for _, r := range rejected {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: "invalid object left out: " + r})
	}
	services, shadowed, err := clusterServices(objs, cluster)
	if err != nil {
		*report = append(*report, check.Result{Check: "config", Status: check.Error, Message: err.Error()})
		return nil, nil, nil
	}
	for _, h := range shadowed {
		*report = append(*report, check.Result{Check: "config", Status: check.Warn, Message: fmt.Sprintf("ServiceEntry host %s ignored: a Kubernetes Service has that name", h)})
	}
	if len(rejected) == 0 {
		*report = append(*report, check.Result{Check: "config", Status: check.OK, Message: fmt.Sprintf("%d objects, %d services", len(objs), len(services))})
	}
	return objs, services, nil
}

// serveServiceAccount is the service account of the leader's pod, else
// deploy/'s "warden".
func serveServiceAccount(ctx context.Context, cs kubernetes.Interface, namespace string) string {
	if holder, err := leader.Holder(ctx, cs, namespace); err == nil && holder != "" {
		if pod, err := cs.CoreV1().Pods(namespace).Get(ctx, holder, metav1.GetOptions{}); err == nil && pod.Spec.ServiceAccountName != "" {
			return pod.Spec.ServiceAccountName
		}
	}
	return "warden"
}

// signingRoot is the root m's signing certificate chains to.
func signingRoot(m *ca.Material) *x509.Certificate {
	inter := x509.NewCertPool()
	for _, c := range m.Chain {
		inter.AddCert(c)
	}
	for _, r := range m.Roots {
		pool := x509.NewCertPool()
		pool.AddCert(r)
		if _, err := m.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			return r
		}
	}
	return m.Roots[0]
}

func proxyStatus(ctx context.Context, addr string) ([]xdsserver.ProxyStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/proxies", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// A TLS server (the CA port) closes a plain HTTP request or
		// answers it with a TLS alert.
		if errors.Is(err, io.EOF) || strings.Contains(err.Error(), "malformed HTTP response") || strings.Contains(err.Error(), "connection reset") {
			return nil, fmt.Errorf("warden serve at %s: %w (--server is serve's HTTP port, its --http-listen, 127.0.0.1:15014 by default, not the CA port)", addr, err)
		}
		return nil, fmt.Errorf("warden serve at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("warden serve at %s: /debug/proxies: %s (is its xDS server on?)", addr, resp.Status)
	}
	var out []xdsserver.ProxyStatus
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// checkFederationObjects adds the trust domains of the
// ClusterFederatedTrustDomain objects serve would take to the file's
// (names), so that policies may name them, and reports each object it
// refuses, as its status does.
func checkFederationObjects(ctx context.Context, k kubeFlags, td spiffeid.TrustDomain, file []*federation.Relationship, names []string) ([]string, []check.Result) {
	rc, err := kube.RESTConfig(k.kubeconfig, k.context)
	if err != nil {
		return names, []check.Result{{Check: "federation", Status: check.Error, Message: err.Error()}}
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return names, []check.Result{{Check: "federation", Status: check.Error, Message: err.Error()}}
	}
	rels, outs, err := fedrelations.List(ctx, dyn, td, file)
	if err != nil {
		return names, []check.Result{{Check: "federation", Status: check.Error, Message: err.Error()}}
	}
	names = nil
	for _, r := range rels {
		names = append(names, r.TrustDomain.Name())
	}
	var res []check.Result
	for _, o := range outs {
		if o.Err != nil {
			kept := "nothing of it is in effect"
			if o.InEffect != nil {
				kept = "its last generation taken stays in effect"
			}
			res = append(res, check.Result{Check: "federation", Status: check.Error, Message: fmt.Sprintf("%s %s is refused: %v; %s (kubectl describe %s %s)", fedrelations.Kind, o.Name, o.Err, kept, fedrelations.GVR.Resource, o.Name)})
			continue
		}
		res = append(res, check.Result{Check: "federation", Status: check.OK, Message: fmt.Sprintf("%s %s: %s for namespaces %s", fedrelations.Kind, o.Name, o.InEffect.TrustDomain.Name(), strings.Join(o.InEffect.Namespaces, ", "))})
	}
	return names, res
}
