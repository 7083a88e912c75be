package fieldwalk_test

import (
	"reflect"
	"testing"

	"github.com/wardenmesh/warden/internal/fieldwalk"
)

type inner struct {
	N int `json:"n"`
}

type root struct {
	P *inner  `json:"p"`
	S []inner `json:"s,omitempty"`
}

// TestGet: a leaf below a nil pointer or an empty slice is unset; Set
// allocates the way to it, after which Get reads it back.
func TestGet(t *testing.T) {
	t.Parallel()
	leaves := fieldwalk.Leaves(reflect.TypeOf(root{}))
	if len(leaves) != 2 || leaves[0].Path != "p.n" || leaves[1].Path != "s.n" {
		t.Fatalf("leaves %+v, want p.n and s.n", leaves)
	}
	var r root
	for _, l := range leaves {
		if _, ok := l.Get(reflect.ValueOf(&r).Elem()); ok {
			t.Errorf("%s: set in a zero root", l.Path)
		}
		l.Set(reflect.ValueOf(&r).Elem(), reflect.ValueOf(7))
		v, ok := l.Get(reflect.ValueOf(&r).Elem())
		if !ok || v.Int() != 7 {
			t.Errorf("%s: after Set 7, Get %v %v", l.Path, v, ok)
		}
	}
}
