package xds_test

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/xds"
)

// TestTPROXYInterception: a sidecar whose metadata says INTERCEPTION_MODE
// TPROXY gets, as from Istio, transparent virtual listeners (IP_TRANSPARENT:
// TPROXY hands Envoy connections to addresses not its own) and
// original_src (mark 1337) on virtualInbound after original_dst; one in
// REDIRECT mode (or without the metadata) gets neither, and the two do not
// share an outbound scope.
func TestTPROXYInterception(t *testing.T) {
	mesh := loadMesh(t, "testdata/mesh")
	const id = "sidecar~127.0.0.2~flaskapp-v1.default~default.svc.cluster.local"
	build := func(mode string) (map[string]*listenerv3.Listener, xds.Scope) {
		t.Helper()
		n := &corev3.Node{Id: id}
		if mode != "" {
			n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"INTERCEPTION_MODE": structpb.NewStringValue(mode)}}
		}
		p, err := xds.ParseNode(n)
		if err != nil {
			t.Fatal(err)
		}
		cfg, w, err := mesh.ProxyConfig(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		ls := map[string]*listenerv3.Listener{}
		for _, r := range cfg.Listeners {
			ls[r.(*listenerv3.Listener).Name] = r.(*listenerv3.Listener)
		}
		return ls, mesh.ScopeOf(p, w)
	}
	filters := func(l *listenerv3.Listener) (names []string) {
		for _, f := range l.GetListenerFilters() {
			names = append(names, f.Name)
		}
		return names
	}
	tproxy, tScope := build("TPROXY")
	for _, name := range []string{xds.OutboundListener, xds.InboundListener} {
		if l := tproxy[name]; l == nil || !l.GetTransparent().GetValue() {
			t.Errorf("TPROXY: %s is not transparent: %v", name, l.GetTransparent())
		}
	}
	in := tproxy[xds.InboundListener]
	if f := filters(in); len(f) < 2 || f[0] != "envoy.filters.listener.original_dst" || f[1] != "envoy.filters.listener.original_src" {
		t.Errorf("TPROXY: virtualInbound's listener filters %v, want original_dst then original_src first", f)
	} else {
		var src originalsrcv3.OriginalSrc
		if err := in.ListenerFilters[1].GetTypedConfig().UnmarshalTo(&src); err != nil || src.Mark != 1337 {
			t.Errorf("TPROXY: original_src %v (mark %d), want mark 1337", err, src.Mark)
		}
	}
	for _, mode := range []string{"", "REDIRECT"} {
		redirect, rScope := build(mode)
		for _, name := range []string{xds.OutboundListener, xds.InboundListener} {
			if l := redirect[name]; l == nil || l.Transparent != nil {
				t.Errorf("REDIRECT (%q): %s transparent %v, want unset", mode, name, l.GetTransparent())
			}
		}
		for _, f := range filters(redirect[xds.InboundListener]) {
			if f == "envoy.filters.listener.original_src" {
				t.Errorf("REDIRECT (%q): virtualInbound has original_src", mode)
			}
		}
		if rScope.Key() == tScope.Key() {
			t.Errorf("REDIRECT (%q) and TPROXY proxies share the outbound scope %q", mode, rScope.Key())
		}
	}
}
