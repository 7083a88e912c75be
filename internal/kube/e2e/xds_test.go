package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wardenmesh/warden/internal/app"
	"github.com/wardenmesh/warden/internal/kube/casecret"
	"github.com/wardenmesh/warden/internal/kube/kubetest"
	"github.com/wardenmesh/warden/internal/testkit"
	"github.com/wardenmesh/warden/xds"
)

// adsStream is a sidecar's ADS stream to warden serve.
type adsStream struct {
	t *testing.T
	s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func openADS(t *testing.T, conn *grpc.ClientConn, token string) *adsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &adsStream{t: t, s: s}
}

// send sends a request: an ACK of last when it is not nil.
func (a *adsStream) send(node, typeURL string, names []string, last *discovery.DiscoveryResponse) error {
	req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typeURL, ResourceNames: names}
	if last != nil {
		req.VersionInfo, req.ResponseNonce = last.VersionInfo, last.Nonce
	}
	return a.s.Send(req)
}

// get sends a request (an ACK of last when it is not nil) and returns the
// next response of that type.
func (a *adsStream) get(node, typeURL string, names []string, last *discovery.DiscoveryResponse) (*discovery.DiscoveryResponse, error) {
	if err := a.send(node, typeURL, names, last); err != nil {
		return nil, err
	}
	for {
		resp, err := a.s.Recv()
		if err != nil {
			return nil, err
		}
		if resp.TypeUrl == typeURL {
			return resp, nil
		}
	}
}

// lbAddrs lists the host:port of every endpoint in an EDS response.
func lbAddrs(t *testing.T, resp *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, r := range resp.Resources {
		var cla endpointv3.ClusterLoadAssignment
		if err := r.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestServeKubernetesXDS: 'warden serve --kubernetes' serves a sidecar,
// authenticated with its service account token, the endpoints of a
// Kubernetes Service from its EndpointSlices, and pushes a slice change
// on the open stream. A token for sleep cannot take the node of a
// reviews pod: the pod's service account, read from the cluster, decides.
func TestServeKubernetesXDS(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	apiserver.MeshApp(t, shop, map[string]string{"v1": "10.20.0.1", "v2": "10.20.0.2"})
	apiserver.ServiceAccount(t, shop, "sleep")
	addr, logs := startServe(t, ns)

	conn := dialServe(t, ns, addr, logs)
	sleepTok := apiserver.Token(t, shop, "sleep", "istio-ca")
	node := fmt.Sprintf("sidecar~10.20.0.9~sleep-1.%s~%s.svc.cluster.local", shop, shop)
	cluster := xds.ClusterName(9080, "", "reviews."+shop+".svc.cluster.local")

	// The registry lists asynchronously: wait until the cluster exists.
	var s *adsStream
	var cds *discovery.DiscoveryResponse
	kubetest.Eventually(t, 30*time.Second, func() error {
		s = openADS(t, conn, sleepTok)
		var err error
		cds, err = s.get(node, resource.ClusterType, nil, nil)
		if err != nil {
			return err
		}
		for _, r := range cds.Resources {
			if strings.Contains(string(r.Value), cluster) {
				return nil
			}
		}
		return fmt.Errorf("no cluster %s in %d clusters", cluster, len(cds.Resources))
	})
	if err := s.send(node, resource.ClusterType, nil, cds); err != nil { // ACK
		t.Fatal(err)
	}
	eds, err := s.get(node, resource.EndpointType, []string{cluster}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := lbAddrs(t, eds), []string{"10.20.0.1:8080", "10.20.0.2:8080"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("EDS %v, want %v", got, want)
	}

	// Scale up: a new slice with a third pod address is pushed.
	apiserver.AddReviewsSlice(t, shop, "10.20.0.3")
	pushed, err := s.get(node, resource.EndpointType, []string{cluster}, eds) // ACK, then wait for the push
	if err != nil {
		t.Fatal(err)
	}
	if got, want := lbAddrs(t, pushed), []string{"10.20.0.1:8080", "10.20.0.2:8080", "10.20.0.3:8080"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pushed EDS %v, want %v", got, want)
	}

	// sleep's token naming reviews-v1's node: refused, by the pod's SA.
	thief := openADS(t, conn, sleepTok)
	_, err = thief.get(fmt.Sprintf("sidecar~10.20.0.1~reviews-v1.%s~%s.svc.cluster.local", shop, shop), resource.ListenerType, nil, nil)
	want := fmt.Sprintf("which runs as spiffe://cluster.local/ns/%s/sa/reviews", shop)
	if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), want) {
		t.Fatalf("sleep as reviews-v1: %v, want PermissionDenied containing %q", err, want)
	}
	// No token, or one for another audience: Unauthenticated, saying why.
	for _, c := range []struct{ token, msg string }{
		{"", "xds: no credentials: send authorization: Bearer <token>"},
		{apiserver.Token(t, shop, "sleep", "some-other-api"), "xds: tokenreview: token rejected for audiences [istio-ca]"},
	} {
		_, err := openADS(t, conn, c.token).get(node, resource.ListenerType, nil, nil)
		if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.HasPrefix(st.Message(), c.msg) {
			t.Fatalf("token %.10q: %v, want Unauthenticated starting %q", c.token, err, c.msg)
		}
	}
	// And reviews' own token gets it.
	own := openADS(t, conn, apiserver.Token(t, shop, "reviews", "istio-ca"))
	if _, err := own.get(fmt.Sprintf("sidecar~10.20.0.1~reviews-v1.%s~%s.svc.cluster.local", shop, shop), resource.ListenerType, nil, nil); err != nil {
		t.Fatalf("reviews as reviews-v1: %v\n%s", err, logs.String())
	}
}

// TestProxyConfigKubernetes: warden proxy-config --kubernetes reads what
// warden serve --kubernetes watches and prints a sidecar's endpoints from
// the Service's EndpointSlices and its identity from its Pod; a
// ServiceEntry claiming the Service's host is reported and left out.
func TestProxyConfigKubernetes(t *testing.T) {
	shop := apiserver.Namespace(t, "shop")
	apiserver.MeshApp(t, shop, map[string]string{"v1": "10.30.0.1", "v2": "10.30.0.2"})
	entries := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: fake-reviews, namespace: %s}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 203.0.113.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: %s}
spec:
  hosts: [payments.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 198.51.100.4}]
`, shop, shop)
	if out, err := apiserver.Kubectl(t, []byte(entries), "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	node := fmt.Sprintf("sidecar~10.30.0.1~reviews-v1.%s~%s.svc.cluster.local", shop, shop)
	var out, errb bytes.Buffer
	if code := app.Run(context.Background(), []string{"proxy-config", "--kubernetes", "--kubeconfig", apiserver.Kubeconfig, "--node", node, "-o", "json", "all"}, &out, &errb); code != 0 {
		t.Fatalf("proxy-config exited %d: %s", code, errb.String())
	}
	var got struct {
		Endpoints []struct {
			ClusterName string `json:"clusterName"`
			Endpoints   []struct {
				LbEndpoints []struct {
					Endpoint struct {
						Address struct {
							SocketAddress struct {
								Address   string `json:"address"`
								PortValue int    `json:"portValue"`
							} `json:"socketAddress"`
						} `json:"address"`
					} `json:"endpoint"`
				} `json:"lbEndpoints"`
			} `json:"endpoints"`
		} `json:"endpoints"`
		Secrets  []map[string]string `json:"secrets"`
		Warnings []string            `json:"warnings"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	byCluster := map[string][]string{}
	for _, cla := range got.Endpoints {
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				sa := e.Endpoint.Address.SocketAddress
				byCluster[cla.ClusterName] = append(byCluster[cla.ClusterName], fmt.Sprintf("%s:%d", sa.Address, sa.PortValue))
			}
		}
	}
	reviews := xds.ClusterName(9080, "", "reviews."+shop+".svc.cluster.local")
	if got, want := byCluster[reviews], []string{"10.30.0.1:8080", "10.30.0.2:8080"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: %v, want %v (the ServiceEntry's 203.0.113.7 must not appear)\n%s", reviews, got, want, out.String())
	}
	if got := byCluster[xds.ClusterName(443, "", "payments.example.com")]; !reflect.DeepEqual(got, []string{"198.51.100.4:443"}) {
		t.Fatalf("payments.example.com: %v\n%s", got, out.String())
	}
	if want := "spiffe://cluster.local/ns/" + shop + "/sa/reviews"; len(got.Secrets) == 0 || got.Secrets[0]["identity"] != want {
		t.Fatalf("secrets %v, want identity %s", got.Secrets, want)
	}
	if want := "ServiceEntry host reviews." + shop + ".svc.cluster.local ignored"; !strings.Contains(strings.Join(got.Warnings, "\n"), want) {
		t.Fatalf("warnings %q lack %q", got.Warnings, want)
	}
	// Neither source, or both: a usage error.
	for _, args := range [][]string{{"--node", node, "all"}, {"--kubernetes", "--config-dir", t.TempDir(), "--node", node, "all"}} {
		errb.Reset()
		if code := app.Run(context.Background(), append([]string{"proxy-config"}, args...), &out, &errb); code == 0 || !strings.Contains(errb.String(), "one of --config-dir or --kubernetes") {
			t.Fatalf("%v: exit %d, %s", args, code, errb.String())
		}
	}
}

// dialServe is a gRPC connection to the warden serve of install
// namespace ns at addr, checked against the root in its istio-ca-secret;
// closed with the test.
func dialServe(t *testing.T, ns, addr string, logs *testkit.Buffer) *grpc.ClientConn {
	t.Helper()
	sec, err := apiserver.Client.CoreV1().Secrets(ns).Get(context.Background(), casecret.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("istio-ca-secret: %v\n%s", err, logs.String())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data["root-cert.pem"]) {
		t.Fatal("no root in istio-ca-secret")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestStreamClosedWhenPodIPReused: a stream authenticated as shop/sleep
// binds to a node whose address no pod has yet (allowed: it gets the
// namespace's outbound configuration). The address then goes to a pod of
// service account reviews (an EndpointSlice names it, as when a pod IP is
// reused or a pod becomes ready): the stream is closed with
// PermissionDenied before any listener of reviews' inbound port reaches
// it.
func TestStreamClosedWhenPodIPReused(t *testing.T) {
	ns := apiserver.Namespace(t, "warden")
	shop := apiserver.Namespace(t, "shop")
	apiserver.MeshApp(t, shop, map[string]string{"v1": "10.21.0.1", "v2": "10.21.0.2"})
	apiserver.ServiceAccount(t, shop, "sleep")
	addr, logs := startServe(t, ns)
	conn := dialServe(t, ns, addr, logs)
	node := fmt.Sprintf("sidecar~10.21.0.3~sleep-1.%s~%s.svc.cluster.local", shop, shop)
	cluster := xds.ClusterName(9080, "", "reviews."+shop+".svc.cluster.local")
	var s *adsStream
	var lds *discovery.DiscoveryResponse
	kubetest.Eventually(t, 30*time.Second, func() error {
		s = openADS(t, conn, apiserver.Token(t, shop, "sleep", "istio-ca"))
		cds, err := s.get(node, resource.ClusterType, nil, nil)
		if err != nil {
			return err
		}
		if !strings.Contains(fmt.Sprint(cds.Resources), cluster) {
			return fmt.Errorf("no cluster %s yet", cluster)
		}
		lds, err = s.get(node, resource.ListenerType, nil, nil)
		return err
	})
	apiserver.AddReviewsSlice(t, shop, "10.21.0.3")
	for last := lds; ; {
		resp, err := s.get(node, resource.ListenerType, nil, last) // ACK, then wait for the next push
		if err != nil {
			want := fmt.Sprintf("runs as spiffe://cluster.local/ns/%s/sa/reviews", shop)
			if st := status.Convert(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), want) {
				t.Fatalf("the stream ended with %v, want PermissionDenied containing %q", err, want)
			}
			return
		}
		for _, r := range resp.Resources {
			if strings.Contains(string(r.Value), xds.InboundCluster(8080)) {
				t.Fatal("reviews' inbound listener reached the sleep stream before it was closed")
			}
		}
		last = resp
	}
}
