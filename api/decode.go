package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// Decode reads one or more YAML documents (separated by ---) or JSON
// objects, including `kind: List`, into typed objects. Empty documents are
// skipped. The first problem found is returned, naming the document (from
// 1), the object and the field path.
func Decode(data []byte) ([]Object, error) {
	var out []Object
	n := 0
	for _, doc := range docSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		n++
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("api: document %d: %v", n, err)
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.UseNumber()
		var raw any
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("api: document %d: %v", n, err)
		}
		objs, err := decodeValue(raw, fmt.Sprintf("document %d", n))
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
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

func decodeValue(raw any, where string) ([]Object, error) {
	m, ok := raw.(map[string]any)
	if !ok {
		if raw == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("api: %s: expected an object, got %s", where, describe(raw))
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	if kind == "List" && apiVersion == "v1" {
		items, _ := m["items"].([]any)
		var out []Object
		for i, it := range items {
			objs, err := decodeValue(it, fmt.Sprintf("%s items[%d]", where, i))
			if err != nil {
				return nil, err
			}
			out = append(out, objs...)
		}
		return out, nil
	}
	if apiVersion == "" || kind == "" {
		return nil, fmt.Errorf("api: %s: apiVersion and kind are required", where)
	}
	k, ok := lookup(apiVersion, kind)
	if !ok {
		return nil, fmt.Errorf("api: %s: unknown kind %s in %s", where, kind, apiVersion)
	}
	obj := k.New()
	name, ns := "", ""
	if md, ok := m["metadata"].(map[string]any); ok {
		name, _ = md["name"].(string)
		ns, _ = md["namespace"].(string)
	}
	id := name
	if ns != "" {
		id = ns + "/" + name
	}
	if name == "" {
		return nil, fmt.Errorf("api: %s (%s): metadata.name is required", where, kind)
	}
	if err := walk("", raw, reflect.ValueOf(obj).Elem(), ""); err != nil {
		return nil, fmt.Errorf("api: %s (%s %s): %w", where, kind, id, err)
	}
	if k.Cluster && ns != "" {
		return nil, fmt.Errorf("api: %s (%s %s): %s is cluster-scoped and takes no namespace", where, kind, id, kind)
	}
	return []Object{obj}, nil
}

// field is a JSON-visible struct field, embedded structs flattened.
type field struct {
	name     string
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
		out = append(out, field{name: name, index: []int{i}, tag: f.Tag, required: req})
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

// walk decodes in (from encoding/json with UseNumber) into v, strictly.
func walk(path string, in any, v reflect.Value, tag reflect.StructTag) error {
	if in == nil {
		return nil // null or absent: the zero value
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
		for _, key := range sortedKeys(m) {
			i := slices.IndexFunc(fs, func(f field) bool { return f.name == key })
			if i < 0 {
				if v.Type() == metaType {
					continue // uid, resourceVersion, managedFields...: the API server's
				}
				return fmt.Errorf("%s: unknown field", join(path, key))
			}
			if err := walk(join(path, key), m[key], v.FieldByIndex(fs[i].index), fs[i].tag); err != nil {
				return err
			}
		}
		for _, f := range fs {
			if _, ok := m[f.name]; !ok && f.required {
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
			if err := walk(fmt.Sprintf("%s[%d]", path, i), el, s.Index(i), tag); err != nil {
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
			if tag.Get("keys") == "port" {
				if n, err := strconv.Atoi(key); err != nil || n < 1 || n > 65535 {
					return fmt.Errorf("%s: key is not a port number (1-65535)", p)
				}
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
		if enum := tag.Get("enum"); enum != "" && !slices.Contains(strings.Split(enum, ","), s) {
			return fmt.Errorf("%s: %q is not one of %s", path, s, strings.ReplaceAll(enum, ",", ", "))
		}
		if tag.Get("format") == "duration" {
			if d, err := time.ParseDuration(s); err != nil || d < 0 {
				return fmt.Errorf("%s: %q is not a duration such as \"1.5s\" or \"100ms\"", path, s)
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

func sortedKeys(m map[string]any) []string {
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
