package main

// The -ambient filter: Istio's ambient index (what istiod serves ztunnel),
// for warden's xds/ambient compiler.
//
// Each stdin line is one JSON case:
//
//	{"id":"c1","yaml":"<Kubernetes and Istio objects>"}
//
// and for each one JSON line is written:
//
//	{"id":"c1","addresses":{"<name>":<istio.workload.Address as protojson>},
//	 "authorizations":{"<name>":<istio.security.Authorization as protojson>},
//	 "wire":{"<name>":"<the same resource's binary encoding, base64>"},
//	 "error":""}
//
// The objects (Namespaces, Pods with their status, Services,
// EndpointSlices, ServiceEntries, PeerAuthentications,
// AuthorizationPolicies) are loaded into a fake Kubernetes client and
// indexed by istiod's ambient index (pilot/pkg/serviceregistry/ambient,
// through pilot/test/xds's FakeDiscoveryServer with PILOT_ENABLE_AMBIENT
// on, cluster "Kubernetes", domain cluster.local, root namespace
// istio-system), then every address (AddressInformation(nil)) and every
// policy (Policies(nil)) is printed. Resources are keyed by the names
// istiod serves them under.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"istio.io/istio/pilot/pkg/features"
	xdsfake "istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/test"
)

// AmbientCase is one input line of -ambient.
type AmbientCase struct {
	ID   string `json:"id"`
	YAML string `json:"yaml"`
}

// AmbientResult is one output line of -ambient.
type AmbientResult struct {
	ID             string                     `json:"id"`
	Addresses      map[string]json.RawMessage `json:"addresses"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	// Wire is each resource's protobuf encoding, by its name (an
	// Authorization's prefixed "authorization "), so that warden can
	// check that its copy of the messages decodes Istio's bytes.
	Wire  map[string][]byte `json:"wire"`
	Error string            `json:"error"`
}

func runAmbientLine(line []byte) AmbientResult {
	var c AmbientCase
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return AmbientResult{Error: err.Error()}
	}
	res, err := buildAmbient(c.YAML)
	res.ID = c.ID
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

func buildAmbient(yaml string) (AmbientResult, error) {
	features.EnableAmbient = true
	out := AmbientResult{Addresses: map[string]json.RawMessage{}, Authorizations: map[string]json.RawMessage{}, Wire: map[string][]byte{}}
	var inner error
	err := test.Wrap(func(t test.Failer) {
		defer func() {
			if r := recover(); r != nil {
				inner = fmt.Errorf("panic: %v", r)
			}
		}()
		s := xdsfake.NewFakeDiscoveryServer(t, xdsfake.FakeOptions{KubernetesObjectString: yaml})
		idx := s.Env().AmbientIndexes
		// The index's collections settle after the informers synced:
		// read until two reads a little apart agree.
		var prev string
		for i := 0; i < 100; i++ {
			addrs, _ := idx.AddressInformation(nil)
			pols := idx.Policies(nil)
			a := map[string]json.RawMessage{}
			wire := map[string][]byte{}
			for _, ad := range addrs {
				b, err := protojson.Marshal(ad.Address)
				if err != nil {
					inner = err
					return
				}
				a[ad.ResourceName()] = b
				if wire[ad.ResourceName()], err = proto.Marshal(ad.Address); err != nil {
					inner = err
					return
				}
			}
			p := map[string]json.RawMessage{}
			for _, w := range pols {
				if w.Authorization == nil {
					continue
				}
				b, err := protojson.Marshal(w.Authorization)
				if err != nil {
					inner = err
					return
				}
				p[w.Authorization.Namespace+"/"+w.Authorization.Name] = b
				if wire["authorization "+w.Authorization.Namespace+"/"+w.Authorization.Name], err = proto.Marshal(w.Authorization); err != nil {
					inner = err
					return
				}
			}
			print, _ := json.Marshal([]any{a, p})
			if string(print) == prev && len(a) > 0 {
				out.Addresses, out.Authorizations, out.Wire = a, p, wire
				return
			}
			prev = string(print)
			time.Sleep(50 * time.Millisecond)
		}
		inner = fmt.Errorf("the ambient index did not settle")
	})
	if err == nil {
		err = inner
	}
	return out, err
}
