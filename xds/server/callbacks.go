package server

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// The adapters from go-control-plane's callbacks.

func (s *Server) callbacks() xdsserver.Callbacks {
	return xdsserver.CallbackFuncs{
		StreamOpenFunc:   func(ctx context.Context, id int64, _ string) error { return s.open(ctx, id) },
		StreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(id) },
		// go-control-plane numbers SotW and delta streams apart, each from
		// 1: delta streams are kept under their negated number.
		DeltaStreamOpenFunc:   func(ctx context.Context, id int64, _ string) error { return s.open(ctx, -id) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) { s.closed(-id) },
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			var nack *string
			ack := ""
			if req.ErrorDetail == nil && req.ResponseNonce != "" {
				if req.TypeUrl == resource.SecretType {
					s.ackSecrets(id, req.VersionInfo)
				} else {
					s.ackInline(id, req.TypeUrl, req.ResponseNonce, req.VersionInfo, false)
				}
			}
			if req.ErrorDetail != nil {
				msg := req.ErrorDetail.GetMessage()
				nack = &msg
			} else if req.ResponseNonce != "" {
				ack = req.VersionInfo
			}
			if err := s.request(context.Background(), id, &req.Node, req.TypeUrl, req.ResourceNames, nack, ack, false); err != nil {
				return err
			}
			s.sotwRequest(id, req)
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			i, inline := s.inlineOf(resp.TypeUrl, resp.VersionInfo)
			s.mu.Lock()
			if st := s.streams[id]; st != nil {
				sw := st.sotwOf(resp.TypeUrl)
				sw.sent, sw.nonce, sw.answered = resp.VersionInfo, resp.Nonce, sw.asked
				st.sentInline(i, resp.Nonce, resp.VersionInfo, inline)
			}
			s.mu.Unlock()
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			id = -id
			i, inline := s.inlineOf(resp.TypeUrl, resp.SystemVersionInfo)
			if resp.TypeUrl != resource.SecretType && i < 0 {
				return
			}
			s.mu.Lock()
			if st := s.streams[id]; st != nil {
				if resp.TypeUrl == resource.SecretType {
					st.secretNonce, st.secretVersion = resp.Nonce, resp.SystemVersionInfo
				}
				st.sentInline(i, resp.Nonce, resp.SystemVersionInfo, inline)
			}
			s.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			id = -id
			if req.ErrorDetail == nil && req.ResponseNonce != "" && req.TypeUrl != resource.SecretType {
				s.ackInline(id, req.TypeUrl, req.ResponseNonce, "", true)
			}
			if req.ErrorDetail == nil && req.ResponseNonce != "" && req.TypeUrl == resource.SecretType {
				s.mu.Lock()
				st := s.streams[id]
				v := ""
				if st != nil && st.secretNonce == req.ResponseNonce {
					v = st.secretVersion
				}
				s.mu.Unlock()
				if v != "" {
					s.ackSecrets(id, v)
				}
			}
			var nack *string
			ack := ""
			if req.ErrorDetail != nil {
				msg := req.ErrorDetail.GetMessage()
				nack = &msg
			} else if req.ResponseNonce != "" {
				ack = req.ResponseNonce
			}
			return s.request(context.Background(), id, &req.Node, req.TypeUrl, req.ResourceNamesSubscribe, nack, ack, true)
		},
	}
}
