package app_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/app"
)

// sdsFirst opens an SDS stream on conn as node, asks for names, and reads
// the first answer or the stream's status.
func sdsFirst(ctx context.Context, conn *grpc.ClientConn, node string, names ...string) (*discovery.DiscoveryResponse, error) {
	s, err := secretsvc.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return nil, err
	}
	// io.EOF: the server ended the stream already (a refusal); Recv has
	// its status.
	if err := s.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: node}, ResourceNames: names, TypeUrl: resource.SecretType}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return s.Recv()
}

// sdsTry opens an SDS stream on sock for names and reads one answer.
func sdsTry(t *testing.T, sock string, names ...string) error {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = sdsFirst(ctx, conn, "", names...)
	return err
}

// sdsDefault opens an SDS stream on sock and returns the leaf of the
// "default" secret and the ROOTCA bundle.
func sdsDefault(t *testing.T, sock string) (leafSerial string, chainLen, roots int) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := sdsFirst(ctx, conn, "sidecar~127.0.0.1~sleep.default~default.svc.cluster.local", "default", "ROOTCA")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Resources {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			t.Fatal(err)
		}
		switch sec.Name {
		case "default":
			certs, err := ca.ParseCerts(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if err != nil {
				t.Fatal(err)
			}
			key, err := ca.ParseKey(sec.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
			if err != nil || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
				t.Fatalf("SDS key does not match its chain: %v", err)
			}
			leafSerial, chainLen = certs[0].SerialNumber.String(), len(certs)
		case "ROOTCA":
			rs, err := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
			if err != nil {
				t.Fatal(err)
			}
			roots = len(rs)
		}
	}
	return leafSerial, chainLen, roots
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentSDSWorkloadAPIFilesAndCAOutage: the agent serves its SVID over
// SDS, the Workload API and files; while the CA is down it serves the
// current one, logging each failure with the CA's address and the token
// file; once the SVID expired it serves it nowhere (the bundle still) and
// says so at ERROR; when the CA is back the new SVID is served on SDS and
// the Workload API alike.
func TestAgentSDSWorkloadAPIFilesAndCAOutage(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, stopCA := serve(t, data)
	tokFile := sleepTokenFile(t, dir, data)

	sdsSock, wSock, out := filepath.Join(dir, "run", "sds.sock"), filepath.Join(dir, "run", "workload.sock"), filepath.Join(dir, "out")
	// A stale socket from a crashed agent is cleaned up.
	os.MkdirAll(filepath.Dir(sdsSock), 0o755)
	if l, err := net.Listen("unix", sdsSock); err == nil {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tokFile,
			"--sds-socket", sdsSock, "--workload-api-socket", wSock, "--output-dir", out, "--ttl", "20s"}, &logs, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("agent exited %d:\n%s", code, logs.String())
		}
	})
	waitFile(t, sdsSock)
	waitFile(t, wSock)
	if fi, _ := os.Stat(sdsSock); fi.Mode().Perm() != 0o600 {
		t.Errorf("SDS socket mode %v, want 0600", fi.Mode().Perm())
	}

	serial, chainLen, roots := sdsDefault(t, sdsSock)
	if serial == "" || chainLen != 1 || roots != 1 {
		t.Fatalf("SDS: serial %q chain %d roots %d\n%s", serial, chainLen, roots, logs.String())
	}

	// go-spiffe's Workload API client sees the same SVID and bundle.
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	x, err := workloadapi.FetchX509Context(wctx, workloadapi.WithAddr("unix://"+wSock))
	if err != nil {
		t.Fatal(err)
	}
	svid := x.DefaultSVID()
	if svid.ID.String() != "spiffe://cluster.local/ns/default/sa/sleep" || svid.Certificates[0].SerialNumber.String() != serial {
		t.Fatalf("Workload API SVID %s serial %s, SDS serial %s", svid.ID, svid.Certificates[0].SerialNumber, serial)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, x.Bundles); err != nil {
		t.Fatalf("Workload API SVID does not verify against its bundle: %v", err)
	}

	// The files for proxyless gRPC.
	waitFile(t, filepath.Join(out, "key.pem"))
	if fi, _ := os.Stat(filepath.Join(out, "key.pem")); fi.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v", fi.Mode().Perm())
	}

	// The CA goes away: the agent keeps serving the current certificate,
	// past the rotation point (half its 20 s), until it expires.
	stopCA()
	// Each failure names what failed: the CA's address and the token
	// file, as attributes of their own.
	const id = "id=spiffe://cluster.local/ns/default/sa/sleep"
	fetchAttrs := " ca=" + regexp.QuoteMeta(addr) + " tokenFile=" + regexp.QuoteMeta(tokFile) + " "
	warn := regexp.MustCompile(`level=WARN msg="SVID rotation failed; serving the current one and retrying" ` + id +
		` validFor=\S+` + fetchAttrs + `retryIn=\S+ error=".*connection refused`)
	notAfter := svid.Certificates[0].NotAfter
	for !warn.MatchString(logs.String()) {
		if time.Now().After(notAfter) {
			t.Fatalf("no retry logged during the outage, naming the CA and the token file (want %s):\n%s", warn, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s2, _, _ := sdsDefault(t, sdsSock); s2 != serial {
		t.Fatalf("during the outage SDS serves %s, want the current %s", s2, serial)
	}
	if time.Now().After(notAfter) {
		t.Fatalf("the outage checks ran past the certificate's expiry (%s): too slow to tell", notAfter)
	}
	// Past its expiry with the CA still down: the SVID is served nowhere,
	// the bundle still is, and the log says so at ERROR.
	time.Sleep(time.Until(notAfter.Add(1500 * time.Millisecond)))
	short, shortCancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer shortCancel()
	if got, err := workloadapi.FetchX509SVID(short, workloadapi.WithAddr("unix://"+wSock)); err == nil {
		t.Fatalf("the Workload API served an expired SVID (notAfter %s)", got.Certificates[0].NotAfter)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer bcancel()
	if b, err := workloadapi.FetchX509Bundles(bctx, workloadapi.WithAddr("unix://"+wSock)); err != nil || b.Len() != 1 {
		t.Fatalf("the Workload API does not serve the bundle while the SVID is expired: %v", err)
	}
	if err := sdsTry(t, sdsSock, "default", "ROOTCA"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "has expired") {
		t.Fatalf("SDS with an expired SVID: %v", err)
	}
	if err := sdsTry(t, sdsSock, "ROOTCA"); err != nil {
		t.Fatalf("SDS refuses ROOTCA alone while the SVID is expired: %v", err)
	}
	// Once expired, the agent retries every 2 s (1 s if it had failed
	// only once before).
	expired := regexp.MustCompile(`level=ERROR msg="SVID expired and renewal keeps failing: it is no longer served \(the trust bundle still is\)" ` + id +
		` expired=` + regexp.QuoteMeta(svid.Certificates[0].NotAfter.UTC().Format("2006-01-02T15:04:05.000Z07:00")) + fetchAttrs + `retryIn=[12]s error=".*connection refused`)
	for deadline := time.Now().Add(5 * time.Second); !expired.MatchString(logs.String()); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no ERROR after the expiry naming the CA and the token file (want %s):\n%s", expired, logs.String())
		}
	}
	// The CA returns on the same address: the agent recovers within a
	// few seconds (it retries every 2 s once the SVID has expired).
	serveAt(t, data, addr)
	deadline := time.Now().Add(10 * time.Second)
	var renewed string
	for {
		if sdsTry(t, sdsSock, "default", "ROOTCA") == nil {
			if renewed, _, _ = sdsDefault(t, sdsSock); renewed != serial {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new certificate after the CA came back:\n%s", logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The Workload API serves the new SVID too (the agent records it
	// before it pushes to SDS), valid and verifying against its bundle.
	nctx, ncancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ncancel()
	x, err = workloadapi.FetchX509Context(nctx, workloadapi.WithAddr("unix://"+wSock))
	if err != nil {
		t.Fatalf("the Workload API after the CA came back: %v\n%s", err, logs.String())
	}
	if got := x.DefaultSVID().Certificates[0]; got.SerialNumber.String() != renewed || !time.Now().Before(got.NotAfter) {
		t.Fatalf("after the CA came back the Workload API serves serial %s (notAfter %s), SDS serves %s", got.SerialNumber, got.NotAfter, renewed)
	}
	if _, _, err := x509svid.Verify(x.DefaultSVID().Certificates, x.Bundles); err != nil {
		t.Fatalf("the new Workload API SVID does not verify against its bundle: %v", err)
	}
}

// TestAgentStartsBeforeCA: an agent started while the CA is down does not
// exit: it retries, serves no socket until its first SVID (that is its
// readiness), and gets the SVID once the CA starts.
func TestAgentStartsBeforeCA(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, stopCA := serve(t, data) // creates the data directory and its root
	tokFile := sleepTokenFile(t, dir, data)
	stopCA()
	sdsSock := filepath.Join(dir, "sds.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"), "--token-file", tokFile,
			"--sds-socket", sdsSock, "--workload-api-socket", ""}, &logs, &logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("agent exited %d:\n%s", code, logs.String())
		}
	})
	time.Sleep(2 * time.Second)
	select {
	case code := <-done:
		t.Fatalf("the agent exited (%d) while the CA was down:\n%s", code, logs.String())
	default:
	}
	if _, err := os.Stat(sdsSock); err == nil {
		t.Fatal("the SDS socket is served before the first SVID")
	}
	if !strings.Contains(logs.String(), "no first certificate yet; retrying") {
		t.Fatalf("no retry logged:\n%s", logs.String())
	}
	serveAt(t, data, addr)
	waitFile(t, sdsSock)
	if serial, _, roots := sdsDefault(t, sdsSock); serial == "" || roots != 1 {
		t.Fatalf("SDS after the CA started: serial %q, %d roots", serial, roots)
	}
}

func TestNodeAgentServesEachCallerItsOwnIdentity(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	sock := filepath.Join(dir, "sds.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- app.Run(ctx, []string{"agent", "--node-agent", "--ca", addr, "--root-cert", filepath.Join(data, "root-cert.pem"),
			"--sds-socket", sock, "--workload-api-socket", ""}, &logs, &logs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFile(t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	open := func(tok string, names ...string) (*discovery.DiscoveryResponse, error) {
		c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		if tok != "" {
			c = metadata.AppendToOutgoingContext(c, "authorization", "Bearer "+tok)
		}
		return sdsFirst(c, conn, "n", names...)
	}
	mint := func(sa string) string {
		_, tok, _ := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", sa)
		return strings.TrimSpace(tok)
	}
	for _, sa := range []string{"sleep", "flaskapp"} {
		resp, err := open(mint(sa), "default")
		if err != nil {
			t.Fatalf("%s: %v\n%s", sa, err, logs.String())
		}
		var sec tlsv3.Secret
		_ = resp.Resources[0].UnmarshalTo(&sec)
		certs, _ := ca.ParseCerts(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if got := certs[0].URIs[0].String(); got != "spiffe://cluster.local/ns/default/sa/"+sa {
			t.Fatalf("caller %s got %s", sa, got)
		}
	}
	if _, err := open("", "default"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: %v", err)
	}
	if _, err := open("forged.token.value", "default"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := open(mint("sleep"), "spiffe://cluster.local/ns/default/sa/flaskapp"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("sleep asking for flaskapp: %v", err)
	}
}

// TestCentralSDS: sidecars without a node agent get their secrets from
// warden serve itself, over TLS, authenticated with their token.
func TestCentralSDS(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	addr, _ := serve(t, data)
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	pool.AppendCertsFromPEM(b)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, tok, _ := run(t, "token", "--data-dir", data, "--ns", "default", "--sa", "flaskapp")
	recv := func(md ...string) (*discovery.DiscoveryResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
		return sdsFirst(ctx, conn, "n", "default", "ROOTCA")
	}
	resp, err := recv("authorization", "Bearer "+strings.TrimSpace(tok))
	if err != nil {
		t.Fatal(err)
	}
	var sec tlsv3.Secret
	for _, r := range resp.Resources {
		_ = r.UnmarshalTo(&sec)
		if sec.Name == "default" {
			certs, _ := ca.ParseCerts(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if got := certs[0].URIs[0].String(); got != "spiffe://cluster.local/ns/default/sa/flaskapp" {
				t.Fatalf("central SDS served %s", got)
			}
		}
	}
	if len(resp.Resources) != 2 {
		t.Fatalf("%d resources, want default and ROOTCA", len(resp.Resources))
	}
	if _, err := recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without a token: %v", err)
	}
}

// TestAgentUsageErrors: the agent's flag mistakes name the flag and what
// fixes them, before anything is dialled or bound.
func TestAgentUsageErrors(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 120), "sds.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--sds-socket", filepath.Join(dir, "s.sock"), "--workload-api-socket", filepath.Join(dir, "s.sock")}, "--sds-socket and --workload-api-socket are both"},
		{[]string{"--sds-socket", long}, "--sds-socket " + long + " is"},
		{[]string{"--socket-mode", "0666"}, "--socket-mode 0666: want permissions for owner and group only"},
		{[]string{"--socket-mode", "9"}, "not an octal mode"},
		{[]string{"--sds-socket", filepath.Join(dir, "a.sock"), "--workload-api-socket", "", "--root-cert", filepath.Join(dir, "missing.pem")}, "no trust anchors for warden's serving certificate: --root-cert " + filepath.Join(dir, "missing.pem") + " does not exist"},
	} {
		code, _, stderr := run(t, append([]string{"agent", "--ca", "127.0.0.1:1", "--token-file", filepath.Join(dir, "token")}, c.args...)...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("agent %s: exit %d, stderr %q; want %q", strings.Join(c.args, " "), code, stderr, c.want)
		}
	}
}
