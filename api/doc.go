// Package api holds Go types for every Istio custom resource warden reads
// (authentication, rbac, security and networking groups) and decodes YAML
// or JSON into them strictly: an unknown field, a wrong type or a value
// outside a field's enum is an error naming the document, the object and
// the field's full path. The CustomResourceDefinitions in deploy/crds are
// generated from the same types (CRDs), so schema and decoder cannot drift.
//
// Field tags beyond encoding/json:
//
//	enum:"A,B,C"       the value must be one of these
//	format:"duration"  a protobuf duration such as "1.5s"
//
// The package imports no Kubernetes client code.
package api
