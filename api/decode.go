package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// Decode reads one or more YAML documents (separated by ---) or JSON
// objects, including `kind: List`, into typed objects. Empty documents are
// skipped. Decoding is strict: a duplicate key, an unknown field, a wrong
// type, a missing required field or a value the field does not allow is
// an error naming the document (from 1), the object and the field path.
// Fields the API server writes (metadata.uid, status...) are ignored.
// Decode stops at the first invalid object; DecodeAll goes on.
func Decode(data []byte) ([]Object, error) {
	objs, errs := DecodeAll(data)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return objs, nil
}

// DecodeAll is Decode that does not stop at an invalid object: it returns
// the valid objects and one error for each invalid one (each document, or
// each item of a List), in order. An invalid object is left out whole;
// its error names the first field in the way.
func DecodeAll(data []byte) ([]Object, []error) {
	var out []Object
	var errs []error
	for i, doc := range Documents(data) {
		where := fmt.Sprintf("document %d", i+1)
		raw, err := parse([]byte(doc))
		if err != nil {
			errs = append(errs, fmt.Errorf("api: %s: %v", where, err))
			continue
		}
		objs, bad := decodeValue(raw, where)
		out = append(out, objs...)
		errs = append(errs, bad...)
	}
	return out, errs
}

// Documents splits a YAML stream at its "---" lines into the documents
// that hold more than comments, in order (document n of an error is
// Documents' n-1).
func Documents(data []byte) []string {
	var out []string
	for _, doc := range docSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) != "" {
			out = append(out, doc)
		}
	}
	return out
}

// parse turns one YAML or JSON document into generic JSON values, numbers
// kept as json.Number so integers are not rounded through float64.
func parse(doc []byte) (raw any, err error) {
	defer func() {
		// Decode promises not to panic; the YAML library is third-party.
		if r := recover(); r != nil {
			raw, err = nil, fmt.Errorf("yaml: %v", r)
		}
	}()
	j, err := yaml.YAMLToJSONStrict(doc) // strict: duplicate keys are errors
	if err != nil {
		return nil, errors.New(strings.Join(strings.Fields(err.Error()), " "))
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, err
	}
	return raw, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// objectID names an object in errors: "Kind namespace/name", "Kind name"
// or, with no name, "Kind".
func objectID(kind, ns, name string) string {
	switch {
	case name == "":
		return kind
	case ns == "":
		return kind + " " + name
	}
	return kind + " " + ns + "/" + name
}

// DecodeObject decodes one object (JSON or YAML; an admission request's
// object, say) strictly, as Decode does. Its error names the object and
// the field without a document number: "api: PeerAuthentication
// default/p: spec.mtls.mode: ...".
func DecodeObject(data []byte) (Object, error) {
	raw, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("api: %v", err)
	}
	if m, ok := raw.(map[string]any); ok && m["kind"] == "List" {
		return nil, errors.New("api: a List, not one object")
	}
	objs, errs := decodeValue(raw, "")
	if len(errs) > 0 {
		return nil, errs[0]
	}
	if len(objs) != 1 {
		return nil, errors.New("api: no object")
	}
	return objs[0], nil
}

// at names where an object is in errors: "document 2 (Kind ns/name)",
// or the object alone when there is no document (DecodeObject).
func at(where, id string) string {
	switch {
	case where == "":
		return id
	case id == "":
		return where
	}
	return where + " (" + id + ")"
}

// decodeValue decodes one document or List item: the valid objects and an
// error for each invalid one. where is "" for DecodeObject.
func decodeValue(raw any, where string) ([]Object, []error) {
	one := func(err error) []error { return []error{err} }
	top := where
	if top == "" {
		top = "object"
	}
	m, ok := raw.(map[string]any)
	if !ok {
		if raw == nil {
			return nil, nil
		}
		return nil, one(fmt.Errorf("api: %s: expected an object, got %s", top, describe(raw)))
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	if kind == "List" && apiVersion == "v1" {
		items, ok := m["items"].([]any)
		if !ok && m["items"] != nil {
			return nil, one(fmt.Errorf("api: %s: items: expected a list, got %s", top, describe(m["items"])))
		}
		var out []Object
		var errs []error
		for i, it := range items {
			objs, bad := decodeValue(it, fmt.Sprintf("%s items[%d]", top, i))
			out = append(out, objs...)
			errs = append(errs, bad...)
		}
		return out, errs
	}
	if apiVersion == "" || kind == "" {
		return nil, one(fmt.Errorf("api: %s: apiVersion and kind are required", top))
	}
	k, ok := lookup(apiVersion, kind)
	if !ok {
		return nil, one(fmt.Errorf("api: %s: unknown kind %s in %s", top, kind, apiVersion))
	}
	md, _ := m["metadata"].(map[string]any)
	name, _ := md["name"].(string)
	ns, _ := md["namespace"].(string)
	id := objectID(kind, ns, name)
	if n, ok := md["name"]; !ok || n == nil || n == "" {
		return nil, one(fmt.Errorf("api: %s: metadata.name is required", at(where, kind)))
	}
	body := maps.Clone(m)
	delete(body, "status") // the API server's and Istio's to write
	obj := k.New()
	if err := walk("", body, reflect.ValueOf(obj).Elem(), ""); err != nil {
		return nil, one(fmt.Errorf("api: %s: %w", at(where, id), err))
	}
	if err := checkObject(obj, k); err != nil {
		return nil, one(fmt.Errorf("api: %s: %w", at(where, id), err))
	}
	return []Object{obj}, nil
}

// field is a JSON-visible struct field, embedded structs flattened.
type field struct {
	name     string
	alias    string // a second accepted spelling, from the alias tag
	index    []int
	tag      reflect.StructTag
	required bool
}

func fields(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			for _, sub := range fields(f.Type) {
				sub.index = append([]int{i}, sub.index...)
				out = append(out, sub)
			}
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		req := !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer
		out = append(out, field{name: name, alias: f.Tag.Get("alias"), index: []int{i}, tag: f.Tag, required: req})
	}
	return out
}

var metaType = reflect.TypeOf(ObjectMeta{})

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// walk decodes in (from encoding/json with UseNumber) into v, strictly:
// the structure and the types. Values are checked afterwards (check).
func walk(path string, in any, v reflect.Value, tag reflect.StructTag) error {
	if in == nil {
		// null or absent: the zero value, except where Istio read a null
		// message as set (null:"set").
		if v.Kind() == reflect.Pointer && tag.Get("null") == "set" {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return nil
	}
	if v.Kind() == reflect.Pointer {
		v.Set(reflect.New(v.Type().Elem()))
		return walk(path, in, v.Elem(), tag)
	}
	switch v.Kind() {
	case reflect.Struct:
		m, ok := in.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: expected an object, got %s", orRoot(path), describe(in))
		}
		fs := fields(v.Type())
		seen := map[int]string{} // field -> the key that set it
		for _, key := range sortedKeys(m) {
			i := slices.IndexFunc(fs, func(f field) bool { return f.name == key || (f.alias != "" && f.alias == key) })
			if i < 0 {
				if v.Type() == metaType {
					continue // uid, resourceVersion, managedFields...: the API server's
				}
				return fmt.Errorf("%s: unknown field", join(path, key))
			}
			if other, dup := seen[i]; dup {
				return fmt.Errorf("%s: duplicate of %s", join(path, key), other)
			}
			seen[i] = key
			if err := walk(join(path, key), m[key], v.FieldByIndex(fs[i].index), fs[i].tag); err != nil {
				return err
			}
		}
		for _, f := range fs {
			if m[f.name] == nil && f.required {
				return fmt.Errorf("%s: required field missing", join(path, f.name))
			}
		}
		return nil
	case reflect.Slice:
		arr, ok := in.([]any)
		if !ok {
			return fmt.Errorf("%s: expected a list, got %s", path, describe(in))
		}
		s := reflect.MakeSlice(v.Type(), len(arr), len(arr))
		for i, el := range arr {
			p := fmt.Sprintf("%s[%d]", path, i)
			if el == nil {
				return fmt.Errorf("%s: null is not allowed here", p) // nor by the API server
			}
			if err := walk(p, el, s.Index(i), tag); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		m, ok := in.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: expected a map, got %s", path, describe(in))
		}
		out := reflect.MakeMapWithSize(v.Type(), len(m))
		for _, key := range sortedKeys(m) {
			p := fmt.Sprintf("%s[%q]", path, key)
			if m[key] == nil {
				return fmt.Errorf("%s: null is not allowed here", p)
			}
			el := reflect.New(v.Type().Elem()).Elem()
			if err := walk(p, m[key], el, ""); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(key), el)
		}
		v.Set(out)
		return nil
	case reflect.String:
		s, ok := in.(string)
		if !ok {
			if _, isBool := in.(bool); isBool {
				return fmt.Errorf("%s: expected a string, got %s (YAML reads unquoted on, off, yes and no as booleans: quote the value)", path, describe(in))
			}
			return fmt.Errorf("%s: expected a string, got %s", path, describe(in))
		}
		if s == "" {
			// An empty Go string reads as unset when checked later; a
			// written "" must still be a value the field allows.
			if err := checkString(path, s, tag, true); err != nil {
				return err
			}
		}
		v.SetString(s)
		return nil
	case reflect.Bool:
		b, ok := in.(bool)
		if !ok {
			return fmt.Errorf("%s: expected true or false, got %s", path, describe(in))
		}
		v.SetBool(b)
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := in.(json.Number)
		i, err := n.Int64()
		if !ok || err != nil || v.OverflowInt(i) {
			return fmt.Errorf("%s: expected an integer in range, got %s", path, describe(in))
		}
		v.SetInt(i)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := in.(json.Number)
		i, err := strconv.ParseUint(string(n), 10, 64)
		if !ok || err != nil || v.OverflowUint(i) {
			return fmt.Errorf("%s: expected a non-negative integer in range, got %s", path, describe(in))
		}
		v.SetUint(i)
		return nil
	case reflect.Float32, reflect.Float64:
		n, ok := in.(json.Number)
		f, err := n.Float64()
		if !ok || err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("%s: expected a number, got %s", path, describe(in))
		}
		v.SetFloat(f)
		return nil
	}
	return fmt.Errorf("%s: cannot decode into %s", path, v.Type())
}

func orRoot(path string) string {
	if path == "" {
		return "object"
	}
	return path
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number:
		return "number " + string(x)
	case bool:
		return fmt.Sprintf("%t", x)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
