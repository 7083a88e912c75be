package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/sds"
	sdsserver "github.com/wardenmesh/warden/sds/server"
)

// caPool is what the agent trusts the CA's serving certificate with: the
// trust anchors file and the bundle it follows (through a rotation, the
// CA may come to present a certificate under the new root).
func (a *agent) caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, r := range ca.MergeRoots(a.fileRoots, a.bundles.Roots()) {
		pool.AddCert(r)
	}
	return pool
}

// bundleSource is what one bundle stream to the CA follows for: the
// per-workload agent's workload, or one namespace of a node agent's
// callers (nodeBundles).
type bundleSource struct {
	log *slog.Logger
	// svid is the SVID to open the next stream with, and a channel closed
	// when its identity leaves (nil: never); nil when none is current.
	svid func() (*sds.SVID, <-chan struct{})
	// apply takes a response's bundles; it runs before the ACK.
	apply func(roots []*x509.Certificate, foreign map[spiffeid.TrustDomain][]*x509.Certificate)
}

// followBundle keeps an SDS stream for ROOTCA alone open to the CA's
// central SDS (the CA port), authenticated with an SVID of src: the CA
// pushes every change of the trust bundle (a rotation publishing a new
// root), and counts the stream among the consumers a rotation waits for.
// The stream also asks for the foreign bundles of the trust domains the
// SVID's namespace federates with (sdsserver.FederatedBundlesKey),
// which the agent relays under their own names, never merged into ROOTCA.
// Each bundle is applied (src.apply: SDS streams, Workload API, files)
// before it is ACKed. A stream lasts no longer than the SVID it opened
// with, nor than that SVID's identity (src.svid's channel): it is then
// reopened at once with a current SVID. It returns when ctx is done.
func (a *agent) followBundle(ctx context.Context, src bundleSource) {
	backoff := time.Second
	for ctx.Err() == nil {
		self, gone := src.svid()
		var got, switched bool
		err := errors.New("no current SVID to authenticate with")
		if self != nil {
			sctx, cancel := context.WithDeadline(ctx, self.Certs[0].NotAfter)
			if gone != nil {
				go func() {
					select {
					case <-gone:
						cancel()
					case <-sctx.Done():
					}
				}()
			}
			got, err = a.bundleStream(sctx, self, src)
			switched = ctx.Err() == nil && sctx.Err() != nil
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		if switched {
			src.log.Debug("the trust bundle stream's SVID expired or its identity left; reopening with a current one", "id", self.ID.String())
			backoff = time.Second
			continue
		}
		if got {
			backoff = time.Second
		}
		src.log.Warn("the trust bundle stream to the CA ended; reconnecting", "ca", a.f.addr, "retryIn", backoff.String(), "error", fmt.Sprint(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// bundleStream runs one stream authenticated with self; got says whether
// a bundle arrived.
func (a *agent) bundleStream(ctx context.Context, self *sds.SVID, src bundleSource) (got bool, err error) {
	c, err := client.New(client.Config{Addr: a.f.addr, Roots: a.caPool(), ServerName: a.fetcher.ServerName, ServerID: a.fetcher.ServerID, ClientCert: client.ClientCert(self)})
	if err != nil {
		return false, err
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := secretsvc.NewSecretDiscoveryServiceClient(c.Conn()).StreamSecrets(ctx)
	if err != nil {
		return false, err
	}
	md, _ := structpb.NewStruct(map[string]any{sdsserver.FederatedBundlesKey: true})
	req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "warden-agent~" + self.ID.String(), Metadata: md}, ResourceNames: []string{sds.RootName}, TypeUrl: resource.SecretType}
	if err := s.Send(req); err != nil {
		return false, err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return got, err
		}
		roots, foreign, err := bundleOf(resp, self.ID.TrustDomain())
		ack := &discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: req.ResourceNames, TypeUrl: resource.SecretType}
		if err != nil {
			src.log.Error("the CA sent a trust bundle the agent cannot use; keeping the current one", "error", err.Error())
			ack.VersionInfo = "" // a NACK: the last accepted version stays
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			src.apply(roots, foreign) // applied (subscribers run) before the ACK
			got = true
		}
		if err := s.Send(ack); err != nil {
			return got, err
		}
	}
}

// workloadBundles is the per-workload agent's bundle source: its
// workload's SVID; ROOTCA and the foreign bundles are the agent's.
func (a *agent) workloadBundles() bundleSource {
	return bundleSource{
		log:  a.log,
		svid: func() (*sds.SVID, <-chan struct{}) { return a.current(), nil },
		apply: func(roots []*x509.Certificate, foreign map[spiffeid.TrustDomain][]*x509.Certificate) {
			a.mu.Lock()
			fedChanged := !sameForeign(a.foreign, foreign)
			a.foreign = foreign
			a.mu.Unlock()
			a.streamedRoots(roots)
			if fedChanged {
				a.foreignChanged()
			}
		},
	}
}

// streamedRoots makes roots, as a bundle stream received them, the
// agent's ROOTCA (pushed to its SDS streams, Workload API and files
// before it returns); from then on SVIDs' roots no longer stand in.
func (a *agent) streamedRoots(roots []*x509.Certificate) {
	a.mu.Lock()
	a.streamed = roots
	a.mu.Unlock()
	a.bundles.Set(roots)
}

// bundleOf reads a bundle stream's response: the roots of ROOTCA, and
// the foreign bundles, each named spiffe://<td> (own, the workload's
// trust domain, is not one of them).
func bundleOf(resp *discovery.DiscoveryResponse, own spiffeid.TrustDomain) ([]*x509.Certificate, map[spiffeid.TrustDomain][]*x509.Certificate, error) {
	var roots []*x509.Certificate
	foreign := map[spiffeid.TrustDomain][]*x509.Certificate{}
	for _, r := range resp.Resources {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			return nil, nil, err
		}
		certs, err := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", sec.Name, err)
		}
		if len(certs) == 0 {
			return nil, nil, fmt.Errorf("%s holds no root", sec.Name)
		}
		if sec.Name == sds.RootName {
			roots = certs
			continue
		}
		td, err := spiffeid.TrustDomainFromString(sec.Name)
		if err != nil || td.IDString() != sec.Name || td == own {
			return nil, nil, fmt.Errorf("unexpected secret %q in the bundle stream", sec.Name)
		}
		foreign[td] = certs
	}
	if roots == nil {
		return nil, nil, fmt.Errorf("no %s in the response", sds.RootName)
	}
	return roots, foreign, nil
}

func sameForeign(a, b map[spiffeid.TrustDomain][]*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for td, roots := range a {
		if o, ok := b[td]; !ok || !ca.SameRoots(roots, o) {
			return false
		}
	}
	return true
}

// federated is what the agent relays of the foreign trust domains: the
// bundles the CA sent for its workload's namespace.
func (a *agent) federated() map[spiffeid.TrustDomain][]*x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.foreign
}

// foreignChanged passes new foreign bundles on: SDS streams, the
// Workload API, the bundle map file.
func (a *agent) foreignChanged() {
	a.sds.FederationChanged()
	if a.wapi != nil {
		a.wapi.Updated()
	}
	a.writeBundleMap(a.roots())
}

// writeBundleMap writes the SPIFFE bundle map (--output-dir) proxyless
// gRPC reads as spiffe_trust_bundle_map_file: the workload's trust
// domain with roots, and each foreign bundle.
func (a *agent) writeBundleMap(roots []*x509.Certificate) {
	self := a.current()
	if a.f.outDir == "" || a.f.nodeAgent || self == nil {
		return
	}
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{self.ID.TrustDomain(): roots}
	for td, r := range a.federated() {
		bundles[td] = r
	}
	if err := sds.WriteBundleMap(a.f.outDir, bundles); err != nil {
		a.log.Error("writing the SPIFFE bundle map", "dir", a.f.outDir, "error", err.Error())
	}
}

// rootsChanged passes a new bundle on: SDS streams, the Workload API, the
// files; and renews the SVID at once when it does not chain to the
// bundle's first root, which is the one the CA signs under.
func (a *agent) rootsChanged(roots []*x509.Certificate) {
	a.sds.RootsChanged()
	if a.wapi != nil {
		a.wapi.Updated()
	}
	self := a.current()
	if self == nil {
		return
	}
	if a.f.outDir != "" {
		if err := sds.WriteFiles(a.f.outDir, self, roots); err != nil {
			a.log.Error("writing certificate files", "dir", a.f.outDir, "error", err.Error())
		}
		a.writeBundleMap(roots)
	}
	if len(roots) > 0 && !chainsTo(self, roots[0]) {
		a.log.Info("the CA signs under a new root; renewing the SVID now", "id", self.ID.String())
		a.cache.RenewAll()
	}
}

// chainsTo says whether s's leaf verifies up to root.
func chainsTo(s *sds.SVID, root *x509.Certificate) bool {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(root)
	for _, c := range s.Certs[1:] {
		inter.AddCert(c)
	}
	_, err := s.Certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}
