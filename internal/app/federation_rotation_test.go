package app_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/internal/testkit"
)

// svidBox is a partner.test workload's current SVID, swapped when its CA
// rotates.
type svidBox struct{ p atomic.Pointer[x509svid.SVID] }

func (b *svidBox) GetX509SVID() (*x509svid.SVID, error) { return b.p.Load(), nil }

var _ x509svid.Source = (*svidBox)(nil)

// bundleFollower is the partner.test side of federation with warden: it
// polls warden's https_spiffe bundle endpoint with go-spiffe's
// federation.FetchBundle, authenticating each fetch with the last bundle
// fetched (SPIFFE Federation §5.2.2.2, a self-serving endpoint), and
// keeps it in set beside its own trust domain's bundle.
type bundleFollower struct {
	set  *x509bundle.Set
	mu   sync.Mutex
	seqs []uint64 // every distinct spiffe_sequence fetched, in order
	errs []string
}

func (f *bundleFollower) run(ctx context.Context, url string, first *spiffebundle.Bundle) {
	last := first
	endpointID := spiffeid.RequireFromString("spiffe://cluster.local/ns/warden-system/sa/warden")
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		b, err := federation.FetchBundle(fctx, localTD, url, federation.WithSPIFFEAuth(last, endpointID))
		cancel()
		f.mu.Lock()
		if err != nil && ctx.Err() == nil {
			f.errs = append(f.errs, err.Error())
		} else if err == nil {
			last = b
			f.set.Add(b.X509Bundle())
			if seq, ok := b.SequenceNumber(); ok && (len(f.seqs) == 0 || f.seqs[len(f.seqs)-1] != seq) {
				f.seqs = append(f.seqs, seq)
			}
		}
		f.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (f *bundleFollower) sequences() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seqs)
}

// callLoad calls both ways, a new connection and handshake per call, until
// stopped, counting calls and failures.
type callLoad struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       context.CancelFunc
	done       chan struct{}
}

func startCalls(t *testing.T, calls ...func() error) *callLoad {
	ctx, cancel := context.WithCancel(context.Background())
	tr := &callLoad{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for ctx.Err() == nil {
			for _, c := range calls {
				if err := c(); err != nil {
					tr.failed.Add(1)
					tr.mu.Lock()
					tr.errs = append(tr.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					tr.mu.Unlock()
				} else {
					tr.ok.Add(1)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-tr.done })
	return tr
}

// waitCalls waits until n more calls succeeded: callLoad flows in this
// phase.
func (tr *callLoad) waitCalls(t *testing.T, n int64, phase string) {
	t.Helper()
	want := tr.ok.Load() + n
	testkit.Eventually(t, 20*time.Second, func() error {
		if tr.ok.Load() < want {
			return fmt.Errorf("%s: %d calls so far, %d failed", phase, tr.ok.Load(), tr.failed.Load())
		}
		return nil
	})
}

// TestFederationRotationUnderTraffic is the issue's must-show rotation:
// a workload of warden's trust domain (its SVID and bundles live from
// warden agent's Workload API, go-spiffe's X509Source) and one of
// partner.test (its CA not warden's; its bundle endpoint go-spiffe's
// federation.NewHandler; warden's bundle followed from warden's bundle
// endpoint) call each other both ways without pause, a new handshake per
// call, while (a) partner.test's root rotates: its endpoint serves the
// old and new roots, its workload moves to an SVID of the new root, its
// endpoint serves the new root alone; and (b) warden's own root rotates
// with 'warden ca rotate' publish, activate, retire, each step raising
// the bundle endpoint's spiffe_sequence, which the partner follows.
// Not one call fails.
func TestFederationRotationUnderTraffic(t *testing.T) {
	epAddr := testkit.FreeAddr(t)
	dir, data, addr, peer := federationFixture(t, "--bundle-endpoint-listen", epAddr, "--bundle-endpoint-refresh-hint", "1s",
		"--default-ttl", "12s", "--max-ttl", "12s", "--rotation-grace", "2s", "--auto-rotate-root", "0")
	_, wSock, _ := startAgent(t, dir, data, addr, "default", "sleep")
	wardenID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/sleep")
	partnerID := spiffeid.RequireFromString("spiffe://partner.test/ns/payments/sa/api")

	// The warden workload: an X509Source on the agent's Workload API,
	// which follows renewals, ROOTCA and the federated bundles.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	src, err := workloadapi.NewX509Source(sctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+wSock)))
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	partnerRoots := func() []*x509.Certificate {
		b, err := src.GetX509BundleForTrustDomain(partnerTD)
		if err != nil {
			return nil
		}
		return b.X509Authorities()
	}
	testkit.Eventually(t, 15*time.Second, func() error {
		if !ca.SameRoots(partnerRoots(), peer.m.Roots) {
			return errors.New("the Workload API has no partner.test bundle yet")
		}
		return nil
	})
	wardenServer, wardenConns := grpcServe(t, tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeAny()))
	wardenClient := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(partnerID))

	// The partner.test workload: its own CA's SVID, and warden's bundle
	// followed from warden's endpoint (bootstrapped with root-cert.pem).
	rootPEM, _ := os.ReadFile(filepath.Join(data, "root-cert.pem"))
	bootstrap, _ := ca.ParseCerts(rootPEM)
	follower := &bundleFollower{set: x509bundle.NewSet(x509bundle.FromX509Authorities(partnerTD, peer.m.Roots))}
	go follower.run(ctx, "https://"+epAddr+"/", spiffebundle.FromX509Authorities(localTD, bootstrap))
	testkit.Eventually(t, 10*time.Second, func() error {
		if len(follower.sequences()) == 0 {
			return errors.New("the partner has not fetched warden's bundle yet")
		}
		return nil
	})
	var partnerSVID svidBox
	pc, pk := peer.issue(t, partnerID)
	partnerSVID.p.Store(&x509svid.SVID{ID: partnerID, Certificates: []*x509.Certificate{pc}, PrivateKey: pk})
	partnerServer, partnerConns := grpcServe(t, tlsconfig.MTLSServerConfig(&partnerSVID, follower.set, tlsconfig.AuthorizeAny()))
	partnerClient := tlsconfig.MTLSClientConfig(&partnerSVID, follower.set, tlsconfig.AuthorizeID(wardenID))

	tr := startCalls(t,
		func() error {
			got, err := call(partnerServer, wardenClient)
			if err == nil && got != wardenID.String() {
				err = fmt.Errorf("partner.test saw %q", got)
			}
			if err != nil {
				return fmt.Errorf("cluster.local → partner.test: %w", err)
			}
			return nil
		},
		func() error {
			got, err := call(wardenServer, partnerClient)
			if err == nil && got != partnerID.String() {
				err = fmt.Errorf("cluster.local saw %q", got)
			}
			if err != nil {
				return fmt.Errorf("partner.test → cluster.local: %w", err)
			}
			return nil
		})
	tr.waitCalls(t, 10, "before any rotation")
	start := time.Now()

	// (a) partner.test rotates: both roots, then its workload moves to
	// the new root, then the new root alone (served by an endpoint whose
	// SVID the new root signs).
	next, both := peer.publishNextRoot(t)
	follower.set.Add(x509bundle.FromX509Authorities(partnerTD, both))
	testkit.Eventually(t, 20*time.Second, func() error {
		if !ca.SameRoots(partnerRoots(), both) {
			return fmt.Errorf("the warden workload holds %d partner.test roots, want the old and the new", len(partnerRoots()))
		}
		return nil
	})
	tr.waitCalls(t, 10, "partner.test publishing its new root")
	peer2 := &foreignPeer{m: next, id: peer.id}
	nc, nk := peer2.issue(t, partnerID)
	partnerSVID.p.Store(&x509svid.SVID{ID: partnerID, Certificates: []*x509.Certificate{nc}, PrivateKey: nk})
	tr.waitCalls(t, 10, "partner.test's SVID under its new root")
	peer.srv.Close()
	peer2.serveRoots(t, peer.addr, 3, next.Roots)
	testkit.Eventually(t, 20*time.Second, func() error {
		if !ca.SameRoots(partnerRoots(), next.Roots) {
			return fmt.Errorf("the warden workload holds %d partner.test roots, want the new alone", len(partnerRoots()))
		}
		return nil
	})
	follower.set.Add(x509bundle.FromX509Authorities(partnerTD, next.Roots))
	tr.waitCalls(t, 10, "partner.test's old root retired")
	// The old root is gone for the warden workload: a leaf it signs is refused.
	oc, ok := peer.issue(t, partnerID)
	if _, err := call(wardenServer, tlsconfig.MTLSClientConfig(&svidBoxOf{&x509svid.SVID{ID: partnerID, Certificates: []*x509.Certificate{oc}, PrivateKey: ok}}, follower.set, tlsconfig.AuthorizeID(wardenID))); err == nil {
		t.Fatal("after partner.test's rotation the warden workload still accepts its old root")
	}
	t.Logf("partner.test's rotation: %s, %d calls, %d failed", time.Since(start).Round(time.Millisecond), tr.ok.Load(), tr.failed.Load())

	// (b) warden rotates; the partner follows the bundle endpoint.
	start = time.Now()
	seqs := len(follower.sequences())
	out := rotate(t, data, "publish")
	newFP := newRoot.FindStringSubmatch(out)
	if newFP == nil {
		t.Fatalf("publish:\n%s", out)
	}
	wardenRoots := func() []*x509.Certificate {
		b, err := follower.set.GetX509BundleForTrustDomain(localTD)
		if err != nil {
			return nil
		}
		return b.X509Authorities()
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		if len(wardenRoots()) != 2 {
			return fmt.Errorf("the partner holds %d roots of cluster.local, want the old and the new", len(wardenRoots()))
		}
		return nil
	})
	tr.waitCalls(t, 10, "warden publishing its new root")
	rotate(t, data, "activate")
	waitStatus(t, data, 30*time.Second, "activation", func(s string) bool { return phaseLine.FindStringSubmatch(s)[1] == "activated" })
	// The warden workload's SVID moves to the new root.
	testkit.Eventually(t, 20*time.Second, func() error {
		s, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		if !chainsTo(s, wardenRoots(), newFP[1]) {
			return fmt.Errorf("the warden workload's SVID is not under the new root yet")
		}
		return nil
	})
	tr.waitCalls(t, 10, "warden signing under its new root")
	rotate(t, data, "retire")
	waitStatus(t, data, 40*time.Second, "retirement", func(s string) bool {
		return strings.Contains(s, "phase: none") && strings.Contains(s, "signing root: sha256 "+newFP[1])
	})
	testkit.Eventually(t, 20*time.Second, func() error {
		if r := wardenRoots(); len(r) != 1 || ca.Fingerprint(r[0]) != newFP[1] {
			return fmt.Errorf("the partner holds %d roots of cluster.local, want the new alone", len(r))
		}
		return nil
	})
	tr.waitCalls(t, 10, "warden's old root retired")
	tr.stop()
	<-tr.done
	t.Logf("warden's rotation: %s; in all %d calls (%d and %d handshakes), %d failed; warden's bundle sequences seen %v",
		time.Since(start).Round(time.Millisecond), tr.ok.Load()+tr.failed.Load(), wardenConns.n.Load(), partnerConns.n.Load(), tr.failed.Load(), follower.sequences())

	if n := tr.failed.Load(); n != 0 {
		t.Errorf("%d calls failed during the rotations:\n%s", n, strings.Join(tr.errs, "\n"))
	}
	// publish, activate and retire each change the bundle: three more
	// sequences, each higher.
	got := follower.sequences()
	if len(got)-seqs < 3 || !slices.IsSorted(got) {
		t.Errorf("warden's bundle endpoint served sequences %v (from index %d): want at least three more, rising", got, seqs)
	}
	cancel() // the follower stops
	follower.mu.Lock()
	if follower.errs != nil {
		t.Errorf("the partner's fetches of warden's bundle failed: %s", strings.Join(follower.errs, "; "))
	}
	follower.mu.Unlock()
	if ok := tr.ok.Load(); wardenConns.n.Load() < ok/2 || partnerConns.n.Load() < ok/2 {
		t.Errorf("%d and %d connections for %d calls: not a new handshake per call", wardenConns.n.Load(), partnerConns.n.Load(), ok)
	}
}

// svidBoxOf is a fixed SVID source.
type svidBoxOf struct{ s *x509svid.SVID }

func (b *svidBoxOf) GetX509SVID() (*x509svid.SVID, error) { return b.s, nil }

// chainsTo says whether s verifies against roots and its chain ends at
// the root whose fingerprint is fp.
func chainsTo(s *x509svid.SVID, roots []*x509.Certificate, fp string) bool {
	for _, r := range roots {
		if ca.Fingerprint(r) != fp {
			continue
		}
		_, _, err := x509svid.Verify(s.Certificates, x509bundle.FromX509Authorities(localTD, []*x509.Certificate{r}))
		return err == nil
	}
	return false
}
