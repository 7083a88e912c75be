// Package fieldwalk enumerates the leaf fields of a configuration type by
// reflection, for the tests that require every field a compiler reads to
// change its output or be reported by name.
package fieldwalk

import (
	"reflect"
	"strings"
)

// Leaf is one settable field below a root struct type.
type Leaf struct {
	Name  string       // json name of the field
	Path  string       // dotted json path from the root, e.g. rules.from.source.principals
	Owner reflect.Type // the struct type holding it
	Type  reflect.Type // the field's type
	index []int
}

// Leaves lists the leaf fields of struct type t: strings, numbers, bools,
// maps and slices of non-structs. Pointers to structs and slices of
// structs are walked into (a slice as its first element).
func Leaves(t reflect.Type) []Leaf {
	var out []Leaf
	walk(t, "", nil, &out)
	return out
}

func walk(t reflect.Type, prefix string, path []int, out *[]Leaf) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() || f.Anonymous {
			continue
		}
		p := append(append([]int{}, path...), i)
		name := JSONName(f)
		elem := f.Type
		if elem.Kind() == reflect.Pointer || (elem.Kind() == reflect.Slice && elem.Elem().Kind() == reflect.Struct) {
			elem = elem.Elem()
		}
		if elem.Kind() == reflect.Struct {
			walk(elem, prefix+name+".", p, out)
			continue
		}
		*out = append(*out, Leaf{Name: name, Path: prefix + name, Owner: t, Type: f.Type, index: p})
	}
}

// JSONName is a field's json name.
func JSONName(f reflect.StructField) string {
	n, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if n == "" {
		return f.Name
	}
	return n
}

// Set sets the leaf in root (a struct value, addressable) to val,
// allocating pointers and one-element slices on the way.
func (l Leaf) Set(root reflect.Value, val reflect.Value) {
	v := root
	for i, idx := range l.index {
		f := v.Field(idx)
		if i == len(l.index)-1 {
			f.Set(val)
			return
		}
		switch f.Kind() {
		case reflect.Pointer:
			if f.IsNil() {
				f.Set(reflect.New(f.Type().Elem()))
			}
			v = f.Elem()
		case reflect.Slice:
			if f.Len() == 0 {
				f.Set(reflect.MakeSlice(f.Type(), 1, 1))
			}
			v = f.Index(0)
		default:
			v = f
		}
	}
}

// Get is the leaf's value in root, or false when a nil pointer or an
// empty slice on the way leaves it unset.
func (l Leaf) Get(root reflect.Value) (reflect.Value, bool) {
	v := root
	for i, idx := range l.index {
		f := v.Field(idx)
		if i == len(l.index)-1 {
			return f, true
		}
		switch f.Kind() {
		case reflect.Pointer:
			if f.IsNil() {
				return reflect.Value{}, false
			}
			v = f.Elem()
		case reflect.Slice:
			if f.Len() == 0 {
				return reflect.Value{}, false
			}
			v = f.Index(0)
		default:
			v = f
		}
	}
	return reflect.Value{}, false
}
