package api

import (
	"fmt"
	"math"
	"reflect"
	"strings"

	"sigs.k8s.io/yaml"
)

// CRD renders k's CustomResourceDefinition (apiextensions.k8s.io/v1) with
// a structural schema generated from its Go type.
func CRD(k Kind) (_ []byte, err error) {
	defer func() {
		if r := recover(); r != nil { // schemaForValue meeting a new field type
			err = fmt.Errorf("api: %s: %v", k.Kind, r)
		}
	}()
	obj := k.New()
	spec, ok := reflect.TypeOf(obj).Elem().FieldByName("Spec")
	if !ok {
		return nil, fmt.Errorf("api: %s has no Spec", k.Kind)
	}
	schema := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"spec":   schemaFor(spec.Type, ""),
			"status": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
		},
	}
	var versions []any
	for _, v := range k.Versions {
		versions = append(versions, map[string]any{
			"name":         v,
			"served":       true,
			"storage":      v == k.Storage,
			"schema":       map[string]any{"openAPIV3Schema": schema},
			"subresources": map[string]any{"status": map[string]any{}},
		})
	}
	scope := "Namespaced"
	if k.Cluster {
		scope = "Cluster"
	}
	names := map[string]any{
		"kind":       k.Kind,
		"listKind":   k.Kind + "List",
		"plural":     k.Plural,
		"singular":   strings.ToLower(k.Kind),
		"categories": k.Categories,
	}
	if len(k.ShortNames) > 0 {
		names["shortNames"] = k.ShortNames
	}
	crd := map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1",
		"kind":       "CustomResourceDefinition",
		"metadata": map[string]any{
			"name":   k.Plural + "." + k.Group,
			"labels": map[string]string{"app.kubernetes.io/part-of": "warden"},
		},
		"spec": map[string]any{"group": k.Group, "names": names, "scope": scope, "versions": versions},
	}
	b, err := yaml.Marshal(crd)
	if err != nil {
		return nil, err
	}
	return append([]byte("# Generated from warden's api package by `go test ./api -update`. Do not edit.\n"), b...), nil
}

func schemaFor(t reflect.Type, tag reflect.StructTag) map[string]any {
	var nullable bool
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
		// A pointer to a scalar is a protobuf wrapper (BoolValue...), where
		// null is a value; null:"set" keeps a null message for decoding.
		nullable = t.Kind() != reflect.Struct || tag.Get("null") == "set"
	}
	s := schemaForValue(t, tag)
	if nullable {
		s["nullable"] = true
	}
	return s
}

func schemaForValue(t reflect.Type, tag reflect.StructTag) map[string]any {
	switch t.Kind() {
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for _, f := range fields(t) {
			props[f.name] = schemaFor(t.FieldByIndex(f.index).Type, f.tag)
			if f.alias != "" {
				props[f.alias] = props[f.name]
			}
			if f.required {
				required = append(required, f.name)
			}
		}
		s := map[string]any{"type": "object", "properties": props}
		if len(required) > 0 {
			s["required"] = required
		}
		return s
	case reflect.Slice:
		return map[string]any{"type": "array", "items": schemaFor(t.Elem(), tag)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaFor(t.Elem(), "")}
	case reflect.String:
		s := map[string]any{"type": "string"}
		if enum := tag.Get("enum"); enum != "" {
			s["enum"] = strings.Split(enum, ",")
		}
		if tag.Get("format") == "byte" {
			s["format"] = "byte"
		}
		return s
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int32, reflect.Int64:
		return map[string]any{"type": "integer", "format": "int" + fmt.Sprint(t.Bits())}
	case reflect.Uint32:
		return map[string]any{"type": "integer", "minimum": 0, "maximum": uint64(math.MaxUint32)}
	case reflect.Uint64:
		return map[string]any{"type": "integer", "minimum": 0}
	case reflect.Float64:
		return map[string]any{"type": "number", "format": "double"}
	}
	panic(fmt.Sprintf("no schema for Go type %s", t)) // a new field type: extend the switch
}
