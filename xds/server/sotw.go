package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/wardenmesh/warden/xds"
)

// sotwCache answers state-of-the-world watches itself and leaves delta
// watches and REST fetches to go-control-plane's snapshot cache.
//
// The snapshot cache keeps, for every stream and type, a map of each
// resource it returned with its version, and wraps every resource in a
// new Any for every response: at a thousand services that is most of a
// proxy's memory in the server and a copy of its whole configuration per
// push, although the proxies of a scope get the same resources. Here a
// response shares its part's Any list (each resource encoded once, see
// marshaled), and the protocol state a SotW stream needs (has it been
// answered for the names it now asks for?) lives in the server's
// streamState as a version and a fingerprint of the names (namesPrint).
type sotwCache struct {
	cachev3.SnapshotCache

	mu    sync.Mutex
	nodes map[string]*sotwNode
	next  int64
}

var _ cachev3.Cache = (*sotwCache)(nil)

type sotwNode struct {
	sets    map[string]*typeSet // type URL -> what the proxy gets now
	watches map[int64]sotwWatch
}

// sotwWatch is an open request: what it asked for and at which version.
type sotwWatch struct {
	typeURL, version string
	sub              cachev3.Subscription
	out              chan cachev3.Response
}

// typeList is resources of one type in order, encoded, with their Anys:
// a part's is built once and shared by every proxy that gets the part.
type typeList struct {
	items []*marshaled
	anys  []*anypb.Any
}

func (l *typeList) len() int {
	if l == nil {
		return 0
	}
	return len(l.items)
}

// newTypeList encodes rs (later resources of a name win, in the place of
// the first, as cachev3.NewResources keeps the last).
func newTypeList(typeURL string, rs []types.Resource) (*typeList, error) {
	l := &typeList{}
	at := map[string]int{}
	for _, r := range rs {
		m, ok := r.(*marshaled)
		if !ok {
			var err error
			if m, err = marshal(r); err != nil {
				return nil, fmt.Errorf("%s: %w", xds.ResourceName(r), err)
			}
		}
		a := &anypb.Any{TypeUrl: typeURL, Value: m.wire}
		if i, ok := at[m.name]; ok {
			l.items[i], l.anys[i] = m, a
			continue
		}
		at[m.name] = len(l.items)
		l.items = append(l.items, m)
		l.anys = append(l.anys, a)
	}
	return l, nil
}

// hash is the list's version: a digest of its resources' encodings, in
// order.
func (l *typeList) hash() string {
	h := sha256.New()
	for _, m := range l.items {
		h.Write(m.wire)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// typeSet is what a proxy gets of one type at a version: its outbound
// part's list, then its inbound part's (either may be nil).
type typeSet struct {
	version string
	lists   [2]*typeList
}

// concat is out's list followed by in's, a resource of both names taking
// in's encoding in out's place (in wins, as when the snapshot maps were
// merged). Shared lists are returned as they are. Only a proxy whose
// inbound part names a resource its outbound part has needs it; others
// keep the two lists apart (typeSet), so nothing per proxy grows with
// the mesh.
func concat(out, in *typeList) *typeList {
	switch {
	case in.len() == 0:
		return out
	case out.len() == 0:
		return in
	}
	n := out.len() + in.len()
	l := &typeList{items: make([]*marshaled, 0, n), anys: make([]*anypb.Any, 0, n)}
	own := make(map[string]int, in.len())
	for i, m := range in.items {
		own[m.name] = i
	}
	for i, m := range out.items {
		a := out.anys[i]
		if j, ok := own[m.name]; ok {
			m, a = in.items[j], in.anys[j]
			delete(own, m.name)
		}
		l.items, l.anys = append(l.items, m), append(l.anys, a)
	}
	for i, m := range in.items {
		if _, ok := own[m.name]; ok {
			l.items, l.anys = append(l.items, m), append(l.anys, in.anys[i])
		}
	}
	return l
}

func newSOTWCache(sc cachev3.SnapshotCache) *sotwCache {
	return &sotwCache{SnapshotCache: sc, nodes: map[string]*sotwNode{}}
}

// CreateWatch answers at once when the request's version is not the
// proxy's current one (the server clears the version of a request whose
// names were not answered yet: see Server.sotwRequest), else waits for
// the next set.
func (c *sotwCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	node, typeURL := req.GetNode().GetId(), req.GetTypeUrl()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(node)
	w := sotwWatch{typeURL: typeURL, version: req.GetVersionInfo(), sub: sub, out: out}
	if set := n.sets[typeURL]; set != nil && set.version != w.version {
		w.respond(set)
		return func() {}, nil
	}
	c.next++
	id := c.next
	n.watches[id] = w
	return func() {
		c.mu.Lock()
		delete(n.watches, id)
		c.mu.Unlock()
	}, nil
}

// Set replaces what node gets and answers the watches whose version
// changed.
func (c *sotwCache) Set(node string, sets map[string]*typeSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.node(node)
	n.sets = sets
	for id, w := range n.watches {
		if set := sets[w.typeURL]; set != nil && set.version != w.version {
			w.respond(set)
			delete(n.watches, id)
		}
	}
}

// node is id's entry, made on first use (c.mu held).
func (c *sotwCache) node(id string) *sotwNode {
	n := c.nodes[id]
	if n == nil {
		n = &sotwNode{watches: map[int64]sotwWatch{}}
		c.nodes[id] = n
	}
	return n
}

// ClearSnapshot forgets node (its last stream closed).
func (c *sotwCache) ClearSnapshot(node string) {
	c.SnapshotCache.ClearSnapshot(node)
	c.mu.Lock()
	delete(c.nodes, node)
	c.mu.Unlock()
}

// respond sends set to w: every resource for a wildcard subscription,
// else those it names. A list the watch takes whole is sent as it is,
// shared. The channel holds one response and a watch is answered once,
// so this never blocks.
func (w sotwWatch) respond(set *typeSet) {
	var parts [][]*anypb.Any
	for _, l := range set.lists {
		switch {
		case l.len() == 0:
		case w.sub.IsWildcard() || subscribesAll(w.sub, l):
			parts = append(parts, l.anys)
		default:
			names := w.sub.SubscribedResources()
			var kept []*anypb.Any
			for i, m := range l.items {
				if _, ok := names[m.name]; ok {
					kept = append(kept, l.anys[i])
				}
			}
			parts = append(parts, kept)
		}
	}
	var anys []*anypb.Any
	switch len(parts) {
	case 0:
	case 1:
		anys = parts[0]
	default:
		anys = slices.Concat(parts...)
	}
	w.out <- &sotwResponse{req: &discovery.DiscoveryRequest{TypeUrl: w.typeURL, VersionInfo: w.version}, version: set.version, anys: anys}
}

func subscribesAll(sub cachev3.Subscription, l *typeList) bool {
	subs := sub.SubscribedResources()
	if len(subs) < l.len() {
		return false
	}
	for _, m := range l.items {
		if _, ok := subs[m.name]; !ok {
			return false
		}
	}
	return true
}

// sotwResponse is a SotW answer whose resources may be shared with other
// proxies' answers: they are only read (encoded) once built.
type sotwResponse struct {
	req     *discovery.DiscoveryRequest // the type and the version asked at
	version string
	anys    []*anypb.Any
}

var _ cachev3.Response = (*sotwResponse)(nil)

// GetDiscoveryResponse returns a new message each call: the server sets
// its nonce.
func (r *sotwResponse) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	return &discovery.DiscoveryResponse{VersionInfo: r.version, Resources: r.anys, TypeUrl: r.req.TypeUrl}, nil
}
func (r *sotwResponse) GetRequest() *discovery.DiscoveryRequest { return r.req }
func (r *sotwResponse) GetVersion() (string, error)             { return r.version, nil }
func (r *sotwResponse) GetResponseVersion() string              { return r.version }
func (r *sotwResponse) GetContext() context.Context             { return context.Background() }

// GetReturnedResources is nil: what a stream was answered is kept by the
// server (streamState), not in a per-stream map of every name.
func (r *sotwResponse) GetReturnedResources() map[string]string { return nil }

var namesSeed = maphash.MakeSeed()

// namesPrint fingerprints a request's resource names regardless of their
// order. A collision (two different name sets, same print) would only
// delay new names to the next push; it cannot give a proxy another's
// configuration.
func namesPrint(names []string) uint64 {
	var h uint64
	for _, n := range names {
		h += maphash.String(namesSeed, n) | 1
	}
	return h
}
