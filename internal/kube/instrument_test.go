package kube_test

import (
	"testing"

	"github.com/wardenmesh/warden/internal/kube"
)

// TestRequestKind: the verb and resource of the requests warden makes,
// as kubectl auth can-i names them.
func TestRequestKind(t *testing.T) {
	for _, c := range []struct{ method, path, watch, verb, resource string }{
		{"GET", "/api/v1/namespaces/ns/configmaps/warden-ca-rotation", "", "get", "configmaps"},
		{"GET", "/api/v1/namespaces/ns/configmaps", "", "list", "configmaps"},
		{"GET", "/api/v1/namespaces/ns/configmaps", "true", "watch", "configmaps"},
		{"GET", "/api/v1/namespaces", "", "list", "namespaces"},
		{"GET", "/api/v1/namespaces/ns", "", "get", "namespaces"},
		{"GET", "/api/v1/secrets", "1", "watch", "secrets"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/warden-leader", "", "update", "leases"},
		{"POST", "/apis/authentication.k8s.io/v1/tokenreviews", "", "create", "tokenreviews"},
		{"POST", "/api/v1/namespaces/ns/serviceaccounts/sleep/token", "", "create", "serviceaccounts/token"},
		{"PUT", "/api/v1/namespaces/ns/pods/p/status", "", "update", "pods/status"},
		{"PATCH", "/apis/networking.istio.io/v1/namespaces/ns/virtualservices/v", "", "patch", "virtualservices"},
		{"DELETE", "/api/v1/namespaces/ns/configmaps/r", "", "delete", "configmaps"},
		{"DELETE", "/api/v1/namespaces/ns/configmaps", "", "deletecollection", "configmaps"},
		{"GET", "/apis", "", "get", "other"},
		{"GET", "/version", "", "get", "other"},
	} {
		verb, res := kube.RequestKind(c.method, c.path, c.watch)
		if verb != c.verb || res != c.resource {
			t.Errorf("%s %s watch=%s: %s %s, want %s %s", c.method, c.path, c.watch, verb, res, c.verb, c.resource)
		}
	}
}
