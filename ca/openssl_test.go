package ca_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

// TestOpenSSLVerify checks issued chains with the openssl a user would run:
// strict X.509 checking, as a TLS client and as a TLS server certificate.
func TestOpenSSLVerify(t *testing.T) {
	t.Parallel()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl is required (installed by .ci/run): ", err)
	}
	clock := catest.NewClock(time.Now())
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Clock: clock, Organization: "cluster.local", CommonName: "warden intermediate", TTL: 24 * time.Hour * 30, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, signer := range []*ca.Material{root, inter} {
		a := catest.Authority(t, signer, catest.WithClock(clock))
		for _, kt := range []ca.KeyType{ca.ECDSAP256, ca.RSA2048} {
			iss, err := a.Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, kt), nil), ID: callerX})
			if err != nil {
				t.Fatal(err)
			}
			catest.OpenSSLVerify(t, iss.Chain)
			dir := t.TempDir()
			write := func(name string, data []byte) string {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, data, 0o600); err != nil {
					t.Fatal(err)
				}
				return p
			}
			leafF := write("leaf.pem", iss.Chain[0])
			untrusted := write("untrusted.pem", []byte(strings.Join(toStrings(iss.Chain[1:len(iss.Chain)-1]), "")))
			// A different root must not verify it.
			other := catest.Root(t, ca.CAOptions{Clock: clock})
			otherF := write("other.pem", ca.EncodeCerts(other.Cert))
			args := []string{"verify", "-CAfile", otherF}
			if len(iss.Chain) > 2 {
				args = append(args, "-untrusted", untrusted)
			}
			out, err := exec.Command(openssl, append(args, leafF)...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "unable to get") {
				t.Errorf("openssl against an unrelated root: %v\n%s", err, out)
			}
		}
	}
}

func toStrings(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}
