// Command benchpeers drives the certificate APIs of warden's peers with
// one load shape, for hack/bench-peers.sh: cfssl serve (plain HTTP, no
// authentication, /api/v1/cfssl/sign) and step-ca (HTTPS, a JWK
// provisioner's one-time token per request, /1.0/sign). Every CSR (ECDSA
// P-256, a SPIFFE URI SAN) and every token is prepared before the clock
// starts. It prints certs/s, p99 and, from /proc/<pid>/stat, the server
// process's CPU per certificate.
//
//	benchpeers -kind cfssl|stepca -url URL -pid PID [-root ROOT.pem -jwk KEY.json -provisioner NAME] [-c 16] [-d 5s]
package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "jwk" {
		if err := newJWK(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "benchpeers:", err)
			os.Exit(1)
		}
		return
	}
	kind := flag.String("kind", "", "cfssl or stepca")
	base := flag.String("url", "", "the server's base URL")
	pid := flag.Int("pid", 0, "the server's process ID (for its CPU time)")
	rootFile := flag.String("root", "", "stepca: the root certificate of its TLS certificate")
	jwkFile := flag.String("jwk", "", "stepca: the provisioner's private JWK")
	prov := flag.String("provisioner", "bench", "stepca: the provisioner's name")
	conc := flag.Int("c", 16, "callers")
	dur := flag.Duration("d", 5*time.Second, "measured duration")
	warm := flag.Duration("warmup", time.Second, "unmeasured warm-up")
	tokens := flag.Int("tokens", 60000, "stepca: one-time tokens prepared")
	flag.Parse()
	if err := run(*kind, *base, *pid, *rootFile, *jwkFile, *prov, *conc, *dur, *warm, *tokens); err != nil {
		fmt.Fprintln(os.Stderr, "benchpeers:", err)
		os.Exit(1)
	}
}

func run(kind, base string, pid int, rootFile, jwkFile, prov string, conc int, dur, warm time.Duration, ntokens int) error {
	// The CSR stream: 256 ECDSA P-256 keys, a CN and a SPIFFE URI SAN each.
	type csrItem struct {
		pem  string
		cn   string
		sans []string
	}
	csrs := make([]csrItem, 256)
	for i := range csrs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		id := fmt.Sprintf("spiffe://cluster.local/ns/bench/sa/worker-%d", i)
		u, _ := url.Parse(id)
		cn := fmt.Sprintf("worker-%d.bench", i)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, URIs: []*url.URL{u}}, key)
		if err != nil {
			return err
		}
		csrs[i] = csrItem{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), cn, []string{cn, id}}
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	var mint func(i int) string
	var target string
	switch kind {
	case "cfssl":
		target = strings.TrimRight(base, "/") + "/api/v1/cfssl/sign"
	case "stepca":
		target = strings.TrimRight(base, "/") + "/1.0/sign"
		pool := x509.NewCertPool()
		b, err := os.ReadFile(rootFile)
		if err != nil {
			return err
		}
		pool.AppendCertsFromPEM(b)
		client.Transport = &http.Transport{MaxIdleConnsPerHost: conc, TLSClientConfig: &tls.Config{RootCAs: pool}}
		jb, err := os.ReadFile(jwkFile)
		if err != nil {
			return err
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(jb); err != nil {
			return err
		}
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: jwk.Key, KeyID: jwk.KeyID}},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			return err
		}
		// One-time tokens are single use: prepare them all now.
		toks := make([]string, ntokens)
		for i := range toks {
			c := csrs[i%len(csrs)]
			jti := make([]byte, 16)
			_, _ = rand.Read(jti)
			now := time.Now()
			claims := map[string]any{"iss": prov, "sub": c.cn, "aud": target, "sans": c.sans, "jti": hex.EncodeToString(jti),
				"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(4 * time.Minute).Unix()}
			t, err := jwt.Signed(signer).Claims(claims).Serialize()
			if err != nil {
				return err
			}
			toks[i] = t
		}
		mint = func(i int) string { return toks[i%len(toks)] }
	default:
		return fmt.Errorf("-kind %q: want cfssl or stepca", kind)
	}
	var next atomic.Int64
	call := func() error {
		i := int(next.Add(1) - 1)
		c := csrs[i%len(csrs)]
		var body []byte
		if kind == "cfssl" {
			body, _ = json.Marshal(map[string]any{"certificate_request": c.pem, "hosts": c.sans})
		} else {
			body, _ = json.Marshal(map[string]any{"csr": c.pem, "ott": mint(i)})
		}
		resp, err := client.Post(target, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return err
		}
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s: %v", resp.Status, out)
		}
		if kind == "cfssl" && out["success"] != true {
			return fmt.Errorf("cfssl: %v", out["errors"])
		}
		return nil
	}
	if err := call(); err != nil {
		return fmt.Errorf("first request: %w", err)
	}
	var (
		mu       sync.Mutex
		lats     []time.Duration
		errs     int
		firstErr error
		measure  atomic.Bool
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			for !stop.Load() {
				t := time.Now()
				err := call()
				d := time.Since(t)
				if !measure.Load() {
					continue
				}
				if err != nil {
					mu.Lock()
					errs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				local = append(local, d)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	time.Sleep(warm)
	cpu0, err := procCPU(pid)
	if err != nil {
		return err
	}
	measure.Store(true)
	begin := time.Now()
	time.Sleep(dur)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(begin)
	cpu1, err := procCPU(pid)
	if err != nil {
		return err
	}
	if len(lats) == 0 {
		return fmt.Errorf("no certificate in the measured period; first error: %v", firstErr)
	}
	slices.Sort(lats)
	p99 := lats[min(len(lats)-1, len(lats)*99/100)]
	cpu := cpu1 - cpu0
	fmt.Printf("%s: %.0f certs/s  p99 %s  errors %d  server CPU %.2f cores, %.0f µs per cert, %.0f certs per server core-second\n",
		kind, float64(len(lats))/elapsed.Seconds(), p99.Round(time.Microsecond), errs, cpu.Seconds()/elapsed.Seconds(),
		float64(cpu.Microseconds())/float64(len(lats)), float64(len(lats))/cpu.Seconds())
	if firstErr != nil {
		fmt.Println("first error:", firstErr)
	}
	return nil
}

// newJWK writes a P-256 provisioner key: the private JWK to path and the
// public one (key ID: its thumbprint, as step names it) to stdout.
func newJWK(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub := jose.JSONWebKey{Key: &key.PublicKey, Algorithm: "ES256", Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return err
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	pub.KeyID = kid
	priv := jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: "ES256", Use: "sig"}
	b, err := priv.MarshalJSON()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return err
	}
	out, err := pub.MarshalJSON()
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// procCPU is a process's user+system time from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0, errors.New("malformed /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ is 100 on Linux
}
