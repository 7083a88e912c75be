// Package api holds Go types for every Istio custom resource warden reads
// (authentication, rbac, security and networking groups) and decodes YAML
// or JSON into them strictly: a duplicate key, an unknown field, a wrong
// type or a value outside a field's enum is an error naming the document,
// the object and the field's full path. The CustomResourceDefinitions in
// deploy/crds are generated from the same types (CRD), so schema and
// decoder cannot drift; a test compares the networking and security
// schemas with Istio's own (istio.io/api in the module cache).
//
// One package serves every group and version: the versions of a kind
// (security v1beta1 and v1; networking v1alpha3, v1beta1 and v1) share one
// schema, so they share one Go type, and TypeMeta records which version an
// object was written in.
//
// Field tags beyond encoding/json:
//
//	enum:"A,B,C"        the value must be one of these
//	enumfold:"A,B"      likewise, in any case (not in the CRD schema)
//	format:"duration"   a Go or protobuf duration such as "1.5s" or "100ms"
//	format:"byte"       base64
//	format:"regex"      an RE2 regular expression (Go's regexp syntax), not empty
//	oneof:"g1,g2"       at most one field of each named group may be set
//	alias:"snake_name"  a second spelling Istio accepts for the field
//	keys:"port"         map keys are port numbers (1-65535)
//	null:"set"          a written null still sets the pointer (Istio 1.x
//	                    read `- mtls:` as mutual TLS on)
//
// The package imports no Kubernetes client code.
package api
