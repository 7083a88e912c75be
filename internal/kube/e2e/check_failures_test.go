package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/check"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/kube/rootcert"
	"github.com/wardenmesh/warden/internal/testkit"
)

// checkLine is a line of warden check's human output, as it prints it.
func checkLine(status, check, msg string) string {
	mark := map[string]string{"ok": "ok     ", "warning": "WARNING", "error": "ERROR  "}[status]
	return fmt.Sprintf("%s %-16s %s", mark, check, msg)
}

// lineMatching is the first whole line of out that re matches (anchored),
// or "".
func lineMatching(out, re string) string {
	r := regexp.MustCompile("^" + re + "$")
	for _, l := range strings.Split(out, "\n") {
		if r.MatchString(l) {
			return l
		}
	}
	return ""
}

func hasLine(out, want string) bool { return lineMatching(out, regexp.QuoteMeta(want)) != "" }

// checkReport is warden check's -o json.
type checkReport struct {
	Failed  bool
	Results []check.Result
}

// find is the first result of the check named name with status whose
// message starts with prefix.
func (r checkReport) find(name, status, prefix string) (check.Result, bool) {
	for _, x := range r.Results {
		if x.Check == name && string(x.Status) == status && strings.HasPrefix(x.Message, prefix) {
			return x, true
		}
	}
	return check.Result{}, false
}

// checkJSON runs warden check --kubernetes -o json.
func checkJSON(t *testing.T, args ...string) checkReport {
	t.Helper()
	_, out, errOut := checkSplit(append(args, "-o", "json")...)
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s%s", err, out, errOut)
	}
	return rep
}

// checkSplit runs warden check --kubernetes with stdout and stderr apart.
func checkSplit(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = app.Run(context.Background(), append([]string{"check", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig}, args...), &o, &e)
	return code, o.String(), e.String()
}

// TestCheckKubernetesFailures: each check of warden check --kubernetes
// failing against the real API server, with the exact line it prints and
// exit 1: a proxy that has not ACKed (-o json); with the install
// stopped, a bundle ConfigMap that lost the signing root, routing to an
// unknown host or subset and a DestinationRule for an unknown host
// (errors), a selector matching nothing, a compiler report, conflicting
// PeerAuthentications and a ServiceEntry a Service shadows (warnings);
// then the CA as serve would read it: a cacerts Secret whose key is not
// its certificate's, one under a foreign root, one expired.
func TestCheckKubernetesFailures(t *testing.T) {
	ctx := context.Background()
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	apiserver.MeshApp(t, shop, map[string]string{"v1": "10.40.0.1", "v2": "10.40.0.2"})
	apiserver.ServiceAccount(t, shop, "sleep")
	httpAddr := testkit.FreeAddr(t)
	addr, logs, stop := startServeWith(t, ns, "replica-a", "--http-listen", httpAddr)
	kubetest.Eventually(t, 30*time.Second, func() error {
		_, err := apiserver.Client.CoreV1().ConfigMaps(shop).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
		return err
	})

	// A proxy that took its listeners and never ACKed them.
	conn := dialServe(t, ns, addr, logs)
	node := fmt.Sprintf("sidecar~10.40.0.9~sleep-1.%s~%s.svc.cluster.local", shop, shop)
	if _, err := openADS(t, conn, apiserver.Token(t, shop, "sleep", "istio-ca")).get(node, resource.ListenerType, nil, nil); err != nil {
		t.Fatal(err)
	}
	code, out, _ := checkSplit("--namespace", ns, "--server", httpAddr, "--stale-after", "0s", "-o", "json")
	var rep struct {
		Failed  bool
		Results []struct{ Check, Status, Message string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	// The server set every type at once; the proxy asked for listeners only.
	late := regexp.MustCompile("^" + regexp.QuoteMeta(node+" has not ACKed cds, eds, lds, rds, sds for ") + `\d+s$`)
	found := false
	for _, r := range rep.Results {
		if r.Check == "proxies" && r.Status == "error" && late.MatchString(r.Message) {
			found = true
		}
	}
	if code != 1 || !rep.Failed || !found {
		t.Fatalf("a proxy that does not ACK: exit %d, failed %t, want a proxies error matching %s in\n%s", code, rep.Failed, late, out)
	}
	stop()

	// The mesh configuration, as the whole cluster holds it: the findings
	// of other tests' namespaces may be there too; ours must be.
	config := testkit.CheckFindingsYAML(shop, "reviews", "reveiws") + strings.ReplaceAll(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fake-reviews, namespace: SHOP}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 203.0.113.7}]
`, "SHOP", shop)
	if out, err := apiserver.Kubectl(t, []byte(config), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = apiserver.Kubectl(t, []byte(config), "delete", "-f", "-") })

	// shop's bundle loses the signing root (its owner stays this install).
	// Other tests' namespaces may lack it already: -o json lists them.
	stale := []string{shop}
	if r, ok := checkJSON(t, "--namespace", ns).find("bundle", "error", rootcert.ConfigMap+" lacks the signing root in "); ok {
		t.Logf("stale before ours: %s", r.Message)
		stale = append(stale, r.Items...)
		slices.Sort(stale)
	}
	cm, err := apiserver.Client.CoreV1().ConfigMaps(shop).Get(ctx, rootcert.ConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	foreign := catest.Root(t, ca.CAOptions{CommonName: "foreign root"})
	foreignFiles, _ := foreign.Encode()
	cm.Data[rootcert.Key] = string(foreignFiles.RootCert)
	if _, err := apiserver.Client.CoreV1().ConfigMaps(shop).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out, _ = checkSplit("--namespace", ns)
	for _, want := range []string{
		checkLine("error", "bundle", check.Listed("bundle", check.Error, stale, "namespace", rootcert.ConfigMap+" lacks the signing root in %s: workloads there refuse new certificates").Message),
		checkLine("error", "routing", "VirtualService "+shop+"/routes: destination host reveiws."+shop+".svc.cluster.local is not in the service registry: calls routed to it fail"),
		checkLine("error", "routing", "VirtualService "+shop+"/routes: destination reviews."+shop+".svc.cluster.local subset v9 is not defined by a DestinationRule: calls routed to it fail"),
		checkLine("error", "routing", "DestinationRule "+shop+"/ghost: host ghost."+shop+".svc.cluster.local is not in the service registry"),
		checkLine("warning", "policy", "AuthorizationPolicy "+shop+"/nobody: selector app=flask matches no workload in the registry"),
		checkLine("warning", "policy", "VirtualService "+shop+"/routes: http[2].delegate is not supported; the rule is skipped"),
		checkLine("warning", "policy", "2 namespace-wide PeerAuthentications in "+shop+": using "+shop+"/a (the oldest, by creationTimestamp then name), ignoring "+shop+"/b"),
		checkLine("warning", "config", "ServiceEntry host reviews."+shop+".svc.cluster.local ignored: a Kubernetes Service has that name"),
	} {
		if !hasLine(out, want) {
			t.Errorf("no line\n%s\nin\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("exit %d with errors, want 1", code)
	}

	// The CA: a cacerts Secret (read before istio-ca-secret, as serve
	// does) that serve would refuse.
	root := catest.Root(t, ca.CAOptions{CommonName: "plugged root", MaxPathLen: -1})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{CommonName: "plugged intermediate", TTL: 30 * 24 * time.Hour, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	mismatched := kubetest.CacertsSecret(ns, inter)
	mismatched.Data["ca-key.pem"] = foreignFiles.CAKey
	underForeign := kubetest.CacertsSecret(ns, inter)
	underForeign.Data["root-cert.pem"], underForeign.Data["cert-chain.pem"] = foreignFiles.RootCert, underForeign.Data["ca-cert.pem"]
	expired, err := ca.NewSelfSigned(ca.CAOptions{CommonName: "expired root", TTL: 24 * time.Hour, Clock: catest.NewClock(time.Now().Add(-48 * time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	prefix := "kube: secret " + ns + "/cacerts: ca: "
	for i, c := range []struct {
		name string
		sec  map[string][]byte
		re   string
	}{
		{"key not the certificate's", mismatched.Data, regexp.QuoteMeta(checkLine("error", "ca", prefix+"ca-key.pem does not match the public key in ca-cert.pem"))},
		{"under a foreign root", underForeign.Data, regexp.QuoteMeta(checkLine("error", "ca", prefix+"ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate signed by unknown authority"))},
		{"expired", kubetest.CacertsSecret(ns, expired).Data, regexp.QuoteMeta(checkLine("error", "ca", prefix+"ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate has expired or is not yet valid: current time ")) +
			`\S+` + regexp.QuoteMeta(" is after "+expired.Cert.NotAfter.UTC().Format(time.RFC3339))},
	} {
		s := kubetest.CacertsSecret(ns, inter)
		s.Data = c.sec
		if i == 0 {
			_, err = apiserver.Client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
		} else {
			_, err = apiserver.Client.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		code, out, _ := checkSplit("--namespace", ns)
		if code != 1 || lineMatching(out, c.re) == "" {
			t.Errorf("cacerts %s: exit %d, want 1 and a line matching\n%s\nin\n%s", c.name, code, c.re, out)
		}
	}
}
