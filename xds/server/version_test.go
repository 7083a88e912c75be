package server

import (
	"fmt"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestPartsVersionTellsInboundPartsApart: two inbound parts whose hashes
// share a long prefix (found by trying listeners until two agree in their
// first 6 hex digits, the part of the hash versions once kept) still give
// a proxy different versions, so the change from one to the other is
// pushed. Versions compare whole: an equal version is never pushed.
func TestPartsVersionTellsInboundPartsApart(t *testing.T) {
	out := &part{hashes: []string{"0123456789abcdef"}}
	seen := map[string]*typeList{}
	for n := 0; n < 1<<16; n++ {
		l, err := newTypeList(resource.ListenerType, []types.Resource{&listenerv3.Listener{Name: fmt.Sprintf("inbound-%d", n)}})
		if err != nil {
			t.Fatal(err)
		}
		h := l.hash()
		other, ok := seen[h[:6]]
		if !ok {
			seen[h[:6]] = l
			continue
		}
		a, b := &part{hashes: []string{other.hash()}}, &part{hashes: []string{h}}
		if va, vb := partsVersion(out, a, 0), partsVersion(out, b, 0); va == vb {
			t.Fatalf("inbound parts %s and %s (listeners %s, %s) give one version %s: the second would never be pushed", other.hash(), h, other.items[0].name, l.items[0].name, va)
		}
		return
	}
	t.Fatal("no two listeners' hashes agreed in 6 hex digits in 65,536 tries (expected after about 5,000)")
}
