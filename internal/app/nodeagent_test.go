package app_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
)

// TestNodeAgentNeverServesItsOwnIdentity: a node agent holding a token
// file of its own (warden-system/node-agent) serves each SDS stream the
// identity of the token the stream sent, and refuses a stream whose
// credentials are not a bearer token; its own token never stands in, so
// its identity appears in no answer, whatever a caller sends.
func TestNodeAgentNeverServesItsOwnIdentity(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	mint := func(ns, sa string) string {
		code, tok, stderr := run(t, "token", "--data-dir", data, "--ns", ns, "--sa", sa)
		if code != 0 {
			t.Fatalf("token: %d %s", code, stderr)
		}
		return strings.TrimSpace(tok)
	}
	own := filepath.Join(dir, "node-agent-token")
	if err := os.WriteFile(own, []byte(mint("warden-system", "node-agent")), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sds.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--node-agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"),
			"--token-file", own, "--sds-socket", sock, "--workload-api-socket", ""}, &logs, &logs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFile(t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const nodeAgentID = "spiffe://cluster.local/ns/warden-system/sa/node-agent"
	sleep, flaskapp := mint("default", "sleep"), mint("default", "flaskapp")
	// ask opens a stream with the metadata md and returns the SPIFFE ID
	// of the "default" certificate it was served.
	ask := func(md ...string) (string, error) {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := sdsFirst(metadata.AppendToOutgoingContext(c, md...), conn, "n", "default")
		if err != nil {
			return "", err
		}
		var sec tlsv3.Secret
		if err := resp.Resources[0].UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		certs, err := ca.ParseCerts(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if err != nil {
			t.Fatal(err)
		}
		return certs[0].URIs[0].String(), nil
	}
	for _, c := range []struct {
		name string
		md   []string
		want string // the identity served; "" for Unauthenticated
	}{
		{"basic scheme", []string{"authorization", "Basic x"}, ""},
		{"basic scheme again (nothing cached)", []string{"authorization", "Basic x"}, ""},
		{"scheme alone", []string{"authorization", "Bearer"}, ""},
		{"empty bearer", []string{"authorization", "Bearer "}, ""},
		{"two tokens", []string{"authorization", "Bearer " + sleep + " " + flaskapp}, ""},
		{"not a b64token", []string{"authorization", "Bearer " + sleep + ",x"}, ""},
		{"token without scheme", []string{"authorization", sleep}, ""},
		{"no header", nil, ""},
		{"empty header", []string{"authorization", ""}, ""},
		{"istio header, empty", []string{"istio_sds_credentail_header-bin", ""}, ""},
		{"istio header, basic", []string{"istio_sds_credentail_header-bin", "Basic x"}, ""},
		{"lowercase bearer", []string{"authorization", "bearer " + sleep}, "spiffe://cluster.local/ns/default/sa/sleep"},
		{"upper-case bearer", []string{"authorization", "BEARER " + sleep}, "spiffe://cluster.local/ns/default/sa/sleep"},
		{"another service account", []string{"authorization", "Bearer " + flaskapp}, "spiffe://cluster.local/ns/default/sa/flaskapp"},
		{"istio header, raw token", []string{"istio_sds_credentail_header-bin", flaskapp}, "spiffe://cluster.local/ns/default/sa/flaskapp"},
		{"basic scheme after a success", []string{"authorization", "Basic x"}, ""},
		{"both headers", []string{"authorization", "Bearer " + sleep, "istio_sds_credentail_header-bin", flaskapp}, ""},
	} {
		got, err := ask(c.md...)
		if got == nodeAgentID {
			t.Errorf("%s: the node agent's own identity was served", c.name)
			continue
		}
		if c.want == "" {
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "authorization: Bearer <token>") {
				t.Errorf("%s: served %q, err %v; want Unauthenticated naming authorization: Bearer <token>", c.name, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: served %q, err %v; want %s", c.name, got, err, c.want)
		}
	}
	if strings.Contains(logs.String(), nodeAgentID) {
		t.Errorf("the node agent's identity reached its log:\n%s", logs.String())
	}
}
