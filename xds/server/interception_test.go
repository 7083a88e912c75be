package server_test

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/xds"
)

// TestInterceptionModes: over a real ADS stream, a TPROXY sidecar's
// virtualOutbound is transparent while a REDIRECT sidecar's in the same
// namespace is not (they do not share an answer), and a sidecar in mode
// NONE is refused, saying why, as InvalidArgument.
func TestInterceptionModes(t *testing.T) {
	_, c := startADS(t)
	node := func(id, mode string) *corev3.Node {
		return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"INTERCEPTION_MODE": structpb.NewStringValue(mode)}}}
	}
	outbound := func(sa string, n *corev3.Node) (*listenerv3.Listener, error) {
		t.Helper()
		s, err := c.StreamAggregatedResources(asID(t, "spiffe://cluster.local/ns/default/sa/"+sa, 10*time.Second))
		if err != nil {
			return nil, err
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType}); err != nil {
			return nil, recvErr(s)
		}
		resp, err := s.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Resources {
			var l listenerv3.Listener
			if err := r.UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			if l.Name == xds.OutboundListener {
				return &l, nil
			}
		}
		t.Fatalf("%s: no %s among %d listeners", n.Id, xds.OutboundListener, len(resp.Resources))
		return nil, nil
	}
	tp, err := outbound("flaskapp", node("sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local", "TPROXY"))
	if err != nil || !tp.GetTransparent().GetValue() {
		t.Fatalf("TPROXY sidecar: %v, transparent %v", err, tp.GetTransparent())
	}
	rd, err := outbound("sleep", node("sidecar~127.0.0.4~sleep.default~default.svc.cluster.local", "REDIRECT"))
	if err != nil || rd.Transparent != nil {
		t.Fatalf("REDIRECT sidecar beside it: %v, transparent %v", err, rd.GetTransparent())
	}
	_, err = outbound("sleep", node("sidecar~127.0.0.5~sleep-2.default~default.svc.cluster.local", "NONE"))
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `INTERCEPTION_MODE "NONE" (a sidecar without iptables) is not served`) {
		t.Fatalf("NONE sidecar: %v, want InvalidArgument naming the mode", err)
	}
}
