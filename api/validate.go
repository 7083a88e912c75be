package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Value checks, driven by field tags (see the package doc) and by the
// check methods of types with rules of their own. Decode runs them after
// the structural walk; Validate runs them on objects built in Go, where an
// empty string, a zero number and a nil pointer all mean "unset".

// checker is implemented by types with rules beyond their field tags. The
// error may be a fieldError to point below the value.
type checker interface {
	check() error
}

// fieldError is a problem with a field below the value being checked.
type fieldError struct {
	field string // relative path, e.g. `matchLabels["app"]`
	msg   string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// validate is every kind's Validate.
func validate(o Object) error {
	k := kindOf(o)
	if k == nil {
		return fmt.Errorf("api: %T is not a kind warden reads", o)
	}
	m := o.Meta()
	if err := checkObject(o, k); err != nil {
		return fmt.Errorf("api: %s: %w", objectID(k.Kind, m.Namespace, m.Name), err)
	}
	return nil
}

var (
	// Kubernetes object names are DNS subdomains, namespaces DNS labels.
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// checkObject checks o's type, metadata and spec values.
func checkObject(o Object, k *Kind) error {
	if t := o.Type(); t.APIVersion != "" || t.Kind != "" {
		if got, ok := lookup(t.APIVersion, t.Kind); !ok || got != k {
			return fmt.Errorf("apiVersion and kind: %s %s is not a served version of %s", t.APIVersion, t.Kind, k.Kind)
		}
	}
	m := o.Meta()
	switch {
	case m.Name == "":
		return errors.New("metadata.name is required")
	case len(m.Name) > 253 || !dnsSubdomain.MatchString(m.Name):
		return fmt.Errorf("metadata.name: %q is not a valid name (lowercase letters, digits, '-' and '.', at most 253 characters)", m.Name)
	case k.Cluster && m.Namespace != "":
		return fmt.Errorf("%s is cluster-scoped and takes no namespace", k.Kind)
	case m.Namespace != "" && (len(m.Namespace) > 63 || !dnsLabel.MatchString(m.Namespace)):
		return fmt.Errorf("metadata.namespace: %q is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)", m.Namespace)
	}
	if m.CreationTimestamp != "" {
		if _, err := time.Parse(time.RFC3339, m.CreationTimestamp); err != nil {
			return fmt.Errorf("metadata.creationTimestamp: %q is not an RFC 3339 time such as \"2026-01-02T15:04:05Z\"", m.CreationTimestamp)
		}
	}
	return check("spec", reflect.ValueOf(o).Elem().FieldByName("Spec"), "")
}

// check checks v (addressable) and everything below it.
func check(path string, v reflect.Value, tag reflect.StructTag) error {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return check(path, v.Elem(), tag)
	case reflect.Struct:
		fs := fields(v.Type())
		for _, f := range fs {
			if err := check(join(path, f.name), v.FieldByIndex(f.index), f.tag); err != nil {
				return err
			}
		}
		if err := checkOneofs(v, fs); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if c, ok := v.Addr().Interface().(checker); ok {
			if err := c.check(); err != nil {
				var fe *fieldError
				if errors.As(err, &fe) {
					return fmt.Errorf("%s: %s", join(path, fe.field), fe.msg)
				}
				return fmt.Errorf("%s: %w", path, err)
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if err := check(fmt.Sprintf("%s[%d]", path, i), v.Index(i), tag); err != nil {
				return err
			}
		}
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, key := range keys {
			p := fmt.Sprintf("%s[%q]", path, key.String())
			if tag.Get("keys") == "port" {
				if n, err := strconv.Atoi(key.String()); err != nil || n < 1 || n > 65535 {
					return fmt.Errorf("%s: key is not a port number (1-65535)", p)
				}
			}
			el := reflect.New(v.Type().Elem()).Elem() // map values are not addressable
			el.Set(v.MapIndex(key))
			if err := check(p, el, ""); err != nil {
				return err
			}
		}
	case reflect.String:
		return checkString(path, v.String(), tag, false)
	}
	return nil
}

// checkString checks s against its field's enum, enumfold and format tags.
// An empty string is unset unless written explicitly (present).
func checkString(path, s string, tag reflect.StructTag, present bool) error {
	if s == "" && !present {
		return nil
	}
	if enum := tag.Get("enum"); enum != "" && !slices.Contains(strings.Split(enum, ","), s) {
		return fmt.Errorf("%s: %q is not one of %s", path, s, strings.ReplaceAll(enum, ",", ", "))
	}
	if enum := tag.Get("enumfold"); enum != "" && !slices.ContainsFunc(strings.Split(enum, ","), func(e string) bool { return strings.EqualFold(e, s) }) {
		return fmt.Errorf("%s: %q is not one of %s (in any case)", path, s, strings.ReplaceAll(enum, ",", ", "))
	}
	switch tag.Get("format") {
	case "duration":
		if d, err := time.ParseDuration(s); err != nil || d < 0 {
			return fmt.Errorf("%s: %q is not a duration such as \"1.5s\" or \"100ms\"", path, s)
		}
	case "byte":
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			return fmt.Errorf("%s: not base64: %v", path, err)
		}
	case "regex":
		// Envoy compiles it with RE2, and refuses the whole route table
		// (every route of every host on the port) when one does not
		// compile; Istio's validation refuses it with Go's regexp, whose
		// syntax is RE2's.
		if s == "" {
			return fmt.Errorf("%s: an empty regex: write the pattern, or use another match", path)
		}
		if _, err := regexp.Compile(s); err != nil {
			return fmt.Errorf("%s: %q is not an RE2 regular expression: %v (RE2 syntax: https://github.com/google/re2/wiki/Syntax)", path, s, unwrapRegexErr(err))
		}
	}
	return nil
}

// checkOneofs enforces the oneof tags: of the fields sharing a group name
// (a field may list several), at most one may be set.
func checkOneofs(v reflect.Value, fs []field) error {
	var groups []string
	set := map[string][]string{}
	for _, f := range fs {
		g := f.tag.Get("oneof")
		if g == "" {
			continue
		}
		fv := v.FieldByIndex(f.index)
		isSet := !fv.IsZero()
		if fv.Kind() == reflect.Slice || fv.Kind() == reflect.Map {
			isSet = fv.Len() > 0
		}
		for _, name := range strings.Split(g, ",") {
			if !slices.Contains(groups, name) {
				groups = append(groups, name)
			}
			if isSet {
				set[name] = append(set[name], f.name)
			}
		}
	}
	for _, g := range groups {
		if names := set[g]; len(names) > 1 {
			return fmt.Errorf("%s and %s are mutually exclusive", strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
		}
	}
	return nil
}

// unwrapRegexErr is regexp's message without its "error parsing regexp: "
// prefix, which the caller's message already says.
func unwrapRegexErr(err error) string {
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}
