package federation_test

import (
	"encoding/json"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/wardenmesh/warden/federation"
)

// FuzzBundleDocument: a fetched bundle document (a peer's, so anyone's)
// goes through CheckDocument, then go-spiffe's parser, as a fetch does.
// Neither panics, and a document CheckDocument takes has a key for every
// root the parser finds (no root comes from outside "keys").
func FuzzBundleDocument(f *testing.F) {
	f.Add([]byte(`{"keys":[{"kty":"EC","use":"x509-svid","x5c":["MIIB"],"crv":"P-256","x":"AA","y":"AA"}],"spiffe_sequence":1,"spiffe_refresh_hint":300}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","use":"jwt-svid","kid":"k","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":[]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		if err := federation.CheckDocument(doc); err != nil {
			return
		}
		b, err := spiffebundle.Parse(local, doc)
		if err != nil {
			return
		}
		var d struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(doc, &d); err != nil {
			t.Fatalf("CheckDocument took a document that is not JSON: %v", err)
		}
		if n := len(b.X509Authorities()); n > len(d.Keys) {
			t.Fatalf("%d roots from %d keys", n, len(d.Keys))
		}
	})
}
