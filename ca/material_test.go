package ca_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/catest"
)

func TestMaterialRoundTrip(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	inter, err := ca.NewIntermediate(root, ca.CAOptions{Clock: clock, TTL: time.Hour * 24 * 365, MaxPathLen: -1})
	if err != nil {
		t.Fatal(err)
	}
	inter2, err := ca.NewIntermediate(inter, ca.CAOptions{Clock: clock, TTL: time.Hour * 24 * 30, MaxPathLen: 0})
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*ca.Material{"root": root, "intermediate": inter, "two intermediates": inter2} {
		t.Run(name, func(t *testing.T) {
			f, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ca.DecodeMaterial(f, clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			if !got.Cert.Equal(m.Cert) || len(got.Chain) != len(m.Chain) || len(got.Roots) != 1 || !got.Roots[0].Equal(root.Cert) {
				t.Fatalf("decoded material differs: chain %d want %d", len(got.Chain), len(m.Chain))
			}
			// cert-chain.pem without the leading CA cert and the root decodes alike.
			f.CertChain = ca.EncodeCerts(m.Chain...)
			if got, err = ca.DecodeMaterial(f, clock.Now()); err != nil || len(got.Chain) != len(m.Chain) {
				t.Fatalf("short cert-chain.pem: %v", err)
			}
		})
	}
}

func TestDecodeMaterialErrors(t *testing.T) {
	t.Parallel()
	clock := catest.NewClock(start)
	root := catest.Root(t, ca.CAOptions{Clock: clock})
	other := catest.Root(t, ca.CAOptions{Clock: clock})
	inter, _ := ca.NewIntermediate(root, ca.CAOptions{Clock: clock, TTL: time.Hour * 24 * 365, MaxPathLen: -1})
	good, _ := inter.Encode()
	otherF, _ := other.Encode()
	leaf, err := catest.Authority(t, root, catest.WithClock(clock)).Sign(ca.SignRequest{CSR: catest.CSR(t, catest.Key(t, ca.ECDSAP256), nil), ID: callerX})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*ca.Files)) ca.Files { c := good; f(&c); return c }
	cases := []struct {
		name string
		f    ca.Files
		now  time.Time
		want string
	}{
		{"truncated key", mod(func(f *ca.Files) { f.CAKey = f.CAKey[:40] }), start,
			"ca: ca-key.pem: no PEM private key found (file truncated or not PEM)"},
		{"empty key", mod(func(f *ca.Files) { f.CAKey = nil }), start,
			"ca: ca-key.pem: empty file, expected a PEM private key"},
		{"key of another CA", mod(func(f *ca.Files) { f.CAKey = otherF.CAKey }), start,
			"ca: ca-key.pem does not match the public key in ca-cert.pem"},
		{"truncated cert", mod(func(f *ca.Files) { f.CACert = f.CACert[:len(f.CACert)/2] }), start,
			"ca: ca-cert.pem: no PEM certificate found (file truncated or not PEM)"},
		{"two certs in ca-cert.pem", mod(func(f *ca.Files) { f.CACert = append(append([]byte{}, f.CACert...), f.RootCert...) }), start,
			"ca: ca-cert.pem: found 2 certificates, expected exactly 1"},
		{"leaf as CA", ca.Files{CACert: leaf.Chain[0], CAKey: good.CAKey, RootCert: good.RootCert}, start,
			"ca: ca-key.pem does not match the public key in ca-cert.pem"},
		{"unrelated root", mod(func(f *ca.Files) { f.RootCert = otherF.RootCert; f.CertChain = nil }), start,
			"ca: ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate signed by unknown authority"}, // then Go's detail,
		{"intermediate as root", mod(func(f *ca.Files) { f.RootCert = f.CACert }), start,
			"ca: root-cert.pem: certificate 1 (CN=warden CA) is not a self-signed CA"},
		{"expired", good, start.Add(2 * 365 * 24 * time.Hour), "ca: ca-cert.pem does not chain to root-cert.pem through cert-chain.pem: x509: certificate has expired or is not yet valid: "},
		{"garbage in chain", mod(func(f *ca.Files) {
			f.CertChain = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
		}), start,
			"ca: cert-chain.pem: certificate 1: x509: malformed certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.DecodeMaterial(tc.f, tc.now)
			if err == nil {
				t.Fatal("decoded bad material")
			}
			if got := err.Error(); !strings.HasPrefix(got, tc.want) {
				t.Fatalf("err = %q\nwant  %q", got, tc.want)
			}
		})
	}
}

// memStore is a KeyStore in memory with create-if-absent semantics, for
// the LoadOrCreate race; the file and Kubernetes stores have their own
// tests against real storage.
type memStore struct {
	mu sync.Mutex
	f  *ca.Files
}

func (s *memStore) Load(context.Context) (ca.Files, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return ca.Files{}, ca.ErrNotFound
	}
	return *s.f, nil
}

func (s *memStore) Create(_ context.Context, f ca.Files) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		return ca.ErrExists
	}
	s.f = &f
	return nil
}

func TestLoadOrCreateRaceConvergesOnOneRoot(t *testing.T) {
	t.Parallel()
	store := &memStore{}
	const n = 8
	roots := make([][]byte, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	var mu sync.Mutex
	nCreated := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			m, c, err := ca.LoadOrCreate(context.Background(), store, nil, func() (*ca.Material, error) {
				return ca.NewSelfSigned(ca.CAOptions{})
			})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			if c {
				nCreated++
			}
			mu.Unlock()
			roots[i] = m.Roots[0].Raw
		}()
	}
	close(start)
	wg.Wait()
	if nCreated != 1 {
		t.Errorf("%d callers created a root, want 1", nCreated)
	}
	for i := 1; i < n; i++ {
		if !bytes.Equal(roots[i], roots[0]) {
			t.Fatalf("caller %d ended with a different root", i)
		}
	}
}

func TestLoadOrCreatePropagatesStoreErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk on fire")
	_, _, err := ca.LoadOrCreate(context.Background(), failingStore{boom}, nil, func() (*ca.Material, error) {
		t.Fatal("must not generate a root when the store cannot be read")
		return nil, nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

type failingStore struct{ err error }

func (f failingStore) Load(context.Context) (ca.Files, error) { return ca.Files{}, f.err }
func (f failingStore) Create(context.Context, ca.Files) error { return f.err }
