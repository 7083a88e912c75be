package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretsvc "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/wardenmesh/warden/ca"
	"github.com/wardenmesh/warden/ca/client"
	"github.com/wardenmesh/warden/sds"
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

// followBundle keeps an SDS stream for ROOTCA alone open to the CA's
// central SDS (the CA port), authenticated with the workload's SVID: the
// CA pushes every change of the trust bundle (a rotation publishing a new
// root), and counts this agent among the consumers a rotation waits for.
// Each bundle is applied (SDS streams, Workload API, files) before it is
// ACKed. It returns when ctx is done.
func (a *agent) followBundle(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		got, err := a.bundleStream(ctx)
		if ctx.Err() != nil {
			return
		}
		if got {
			backoff = time.Second
		}
		a.log.Warn("the trust bundle stream to the CA ended; reconnecting", "ca", a.f.addr, "retryIn", backoff.String(), "error", fmt.Sprint(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// bundleStream runs one stream; got says whether a bundle arrived.
func (a *agent) bundleStream(ctx context.Context) (got bool, err error) {
	self := a.current()
	if self == nil {
		return false, errors.New("no SVID yet")
	}
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
	req := &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "warden-agent~" + self.ID.String()}, ResourceNames: []string{sds.RootName}, TypeUrl: resource.SecretType}
	if err := s.Send(req); err != nil {
		return false, err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return got, err
		}
		roots, err := bundleOf(resp)
		ack := &discovery.DiscoveryRequest{VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: req.ResourceNames, TypeUrl: resource.SecretType}
		if err != nil {
			a.log.Error("the CA sent a trust bundle the agent cannot use; keeping the current one", "error", err.Error())
			ack.VersionInfo = "" // a NACK: the last accepted version stays
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			a.mu.Lock()
			a.streamed = roots
			a.mu.Unlock()
			a.bundles.Set(roots) // applied (subscribers run) before the ACK
			got = true
		}
		if err := s.Send(ack); err != nil {
			return got, err
		}
	}
}

// bundleOf reads the roots of a ROOTCA response.
func bundleOf(resp *discovery.DiscoveryResponse) ([]*x509.Certificate, error) {
	for _, r := range resp.Resources {
		var sec tlsv3.Secret
		if err := r.UnmarshalTo(&sec); err != nil {
			return nil, err
		}
		if sec.Name != sds.RootName {
			continue
		}
		roots, err := ca.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
		if err != nil {
			return nil, fmt.Errorf("ROOTCA: %w", err)
		}
		if len(roots) == 0 {
			return nil, errors.New("ROOTCA holds no root")
		}
		return roots, nil
	}
	return nil, fmt.Errorf("no %s in the response", sds.RootName)
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
