package server

import (
	"testing"

	"github.com/wardenmesh/warden/api"
)

// TestObjHashFollowsContent: two decodings of one document hash alike
// (a reload of an unchanged file is not an edit), and an edit behind a
// nested pointer changes the hash.
func TestObjHashFollowsContent(t *testing.T) {
	doc := []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewers, namespace: default}
spec:
  selector: {matchLabels: {app: flaskapp}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
`)
	decode := func() *api.AuthorizationPolicy {
		objs, err := api.Decode(doc)
		if err != nil {
			t.Fatal(err)
		}
		return objs[0].(*api.AuthorizationPolicy)
	}
	a, b := decode(), decode()
	if objHash(a) != objHash(b) {
		t.Fatal("two decodings of the same document hash differently")
	}
	b.Spec.Rules[0].From[0].Source.Principals[0] = "cluster.local/ns/default/sa/other"
	if objHash(a) == objHash(b) {
		t.Fatal("an edit behind a pointer did not change the hash")
	}
}
