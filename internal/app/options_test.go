package app

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestServeReservesItsNames: the CA's serving names and addresses are
// reserved in its CSR policy, so even with --allow-csr-dns-sans and
// --allow-csr-ip-sans no workload can obtain them.
func TestServeReservesItsNames(t *testing.T) {
	f := serveFlags{trustDomain: "cluster.local", caKeyType: "ecdsa-p256", listen: "192.0.2.7:15012",
		dnsNames: "localhost,warden.warden-system.svc", allowDNS: true, allowIP: true, tokenLeeway: time.Minute, tokenMaxLifetime: time.Hour}
	o, err := f.options()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"localhost", "warden.warden-system.svc", "127.0.0.1", "::1", "192.0.2.7"} {
		if !slices.Contains(o.caCfg.CSR.Reserved, want) {
			t.Errorf("%s not reserved: %v", want, o.caCfg.CSR.Reserved)
		}
	}
}

// TestIstiodNames: with --istiod-names the serving certificate covers the
// names Istio's agent dials for istiod, and no workload may get them.
func TestIstiodNames(t *testing.T) {
	f := serveFlags{trustDomain: "cluster.local", caKeyType: "ecdsa-p256", listen: "127.0.0.1:15012",
		dnsNames: "localhost", allowDNS: true, tokenLeeway: time.Minute, tokenMaxLifetime: time.Hour, istiodNames: true, istiodNamespace: "istio-system"}
	o, err := f.options()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"} {
		if !slices.Contains(o.serving.DNSNames, want) || !slices.Contains(o.caCfg.CSR.Reserved, want) {
			t.Errorf("%s: served %v, reserved %v", want, o.serving.DNSNames, o.caCfg.CSR.Reserved)
		}
	}
	f.istiodNames = false
	if o, _ = f.options(); slices.Contains(o.serving.DNSNames, "istiod.istio-system.svc") {
		t.Error("istiod's names served without --istiod-names")
	}
}

// TestWebhookListen: --webhook-listen needs Kubernetes mode, and puts in
// the serving certificate (reserved from workloads) the name the API
// server checks when it calls warden's Service in the install's
// namespace.
func TestWebhookListen(t *testing.T) {
	f := serveFlags{trustDomain: "cluster.local", caKeyType: "ecdsa-p256", listen: "127.0.0.1:15012",
		dnsNames: "localhost", tokenLeeway: time.Minute, tokenMaxLifetime: time.Hour, webhookListen: "0.0.0.0:15017"}
	f.kube.namespace = "mesh-ca"
	if _, err := f.options(); err == nil || err.Error() != "usage: --webhook-listen serves Istio's validating webhook to a Kubernetes API server: it needs --kubernetes" {
		t.Fatalf("without --kubernetes: %v", err)
	}
	f.kube.on = true
	o, err := f.options()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(o.serving.DNSNames, "warden.mesh-ca.svc") || !slices.Contains(o.caCfg.CSR.Reserved, "warden.mesh-ca.svc") {
		t.Errorf("served %v, reserved %v", o.serving.DNSNames, o.caCfg.CSR.Reserved)
	}
	f.webhookListen = ""
	if o, _ = f.options(); slices.Contains(o.serving.DNSNames, "warden.mesh-ca.svc") {
		t.Error("the webhook's name served without --webhook-listen")
	}
}

// TestIstiodRevisionNames: --istiod-namespace and --istiod-revision give
// the names of istiod's Service there and of the revision's
// istiod-<revision> (the default revision has none of its own); a name
// that is no DNS label is refused.
func TestIstiodRevisionNames(t *testing.T) {
	f := serveFlags{trustDomain: "cluster.local", caKeyType: "ecdsa-p256", listen: "127.0.0.1:15012",
		dnsNames: "localhost", tokenLeeway: time.Minute, tokenMaxLifetime: time.Hour, istiodNames: true,
		istiodNamespace: "mesh-cp", istiodRevision: "canary"}
	o, err := f.options()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"istiod.mesh-cp.svc", "istiod-canary.mesh-cp.svc", "istiod-canary.mesh-cp.svc.cluster.local", "istiod-canary.mesh-cp", "istiod-canary"} {
		if !slices.Contains(o.serving.DNSNames, want) || !slices.Contains(o.caCfg.CSR.Reserved, want) {
			t.Errorf("%s: served %v, reserved %v", want, o.serving.DNSNames, o.caCfg.CSR.Reserved)
		}
	}
	if slices.Contains(o.serving.DNSNames, "istiod.istio-system.svc") {
		t.Errorf("istio-system's name served with --istiod-namespace mesh-cp: %v", o.serving.DNSNames)
	}
	f.istiodRevision = "default"
	if o, _ = f.options(); slices.ContainsFunc(o.serving.DNSNames, func(n string) bool { return strings.HasPrefix(n, "istiod-") }) {
		t.Errorf("a name of its own for the default revision: %v", o.serving.DNSNames)
	}
	for _, bad := range []serveFlags{{istiodNamespace: "Mesh_CP"}, {istiodNamespace: "mesh-cp", istiodRevision: "1.24"}} {
		g := f
		g.istiodNamespace, g.istiodRevision = bad.istiodNamespace, bad.istiodRevision
		if _, err := g.options(); err == nil || !strings.Contains(err.Error(), "--istiod-") {
			t.Errorf("--istiod-namespace %q --istiod-revision %q: %v", bad.istiodNamespace, bad.istiodRevision, err)
		}
	}
}
