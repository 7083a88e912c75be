package server

import (
	"context"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// handle ends one ADS stream from outside the loop that serves it.
// go-control-plane owns a stream's goroutines and ends a stream only when
// the client does, so every stream is served through ads, which waits
// for either go-control-plane's handler or the handle's end, and answers
// the client with the handle's status. From the end on, nothing more is
// sent on the stream: responses go-control-plane still tries to send are
// refused by the stream wrapper, and the handler returns only once a send
// already under way has finished (gRPC forbids sending after the handler
// returned).
type handle struct {
	done   chan struct{}
	once   sync.Once
	err    error // the status the stream ends with
	cancel context.CancelFunc

	sendMu sync.RWMutex
	ended  bool
}

type handleKey struct{}

func newHandle(parent context.Context) (context.Context, *handle) {
	ctx, cancel := context.WithCancel(parent)
	h := &handle{done: make(chan struct{}), cancel: cancel}
	return context.WithValue(ctx, handleKey{}, h), h
}

// handleOf is the handle of the stream whose context ctx is (nil for a
// stream not served through ads, as in go-control-plane's own tests).
func handleOf(ctx context.Context) *handle {
	h, _ := ctx.Value(handleKey{}).(*handle)
	return h
}

// end closes the stream with err (a gRPC status) as soon as its handler
// can return. Only the first call counts; it never blocks.
func (h *handle) end(err error) {
	if h == nil {
		return
	}
	h.once.Do(func() {
		h.err = err
		close(h.done)
		h.cancel()
	})
}

// serve runs a stream's handler until it returns or the handle ends.
func (h *handle) serve(run func() error) error {
	res := make(chan error, 1)
	go func() { res <- run() }()
	select {
	case err := <-res:
		h.cancel()
		return err
	case <-h.done:
		h.sendMu.Lock() // waits for a send under way
		h.ended = true
		h.sendMu.Unlock()
		return h.err
	}
}

// send passes a response on unless the stream has ended.
func (h *handle) send(f func() error) error {
	h.sendMu.RLock()
	defer h.sendMu.RUnlock()
	if h.ended {
		return h.err
	}
	return f()
}

// ads is go-control-plane's ADS service with a handle on every stream.
type ads struct {
	xdsserver.Server
	srv *Server
}

var _ discovery.AggregatedDiscoveryServiceServer = ads{}

func (a ads) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	ctx, h := newHandle(stream.Context())
	return h.serve(func() error { return a.Server.StreamAggregatedResources(&sotwStream{stream, ctx, h}) })
}

// DeltaAggregatedResources reads a stream's first request: a ztunnel's
// stream is served by warden (serveZtunnel), any other by
// go-control-plane, which then reads the same first request.
func (a ads) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx, h := newHandle(stream.Context())
	return h.serve(func() error {
		first, err := stream.Recv()
		if err != nil {
			return err
		}
		if a.srv != nil && isZtunnel(first.GetNode().GetId()) {
			return a.srv.serveZtunnel(ctx, h, stream, first)
		}
		return a.Server.DeltaAggregatedResources(&deltaStream{stream, ctx, h, first})
	})
}

type sotwStream struct {
	discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	ctx context.Context
	h   *handle
}

func (s *sotwStream) Context() context.Context { return s.ctx }

func (s *sotwStream) Send(r *discovery.DiscoveryResponse) error {
	return s.h.send(func() error { return s.AggregatedDiscoveryService_StreamAggregatedResourcesServer.Send(r) })
}

type deltaStream struct {
	discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	ctx   context.Context
	h     *handle
	first *discovery.DeltaDiscoveryRequest // read already, returned first
}

func (s *deltaStream) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	if r := s.first; r != nil {
		s.first = nil
		return r, nil
	}
	return s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Recv()
}

func (s *deltaStream) Context() context.Context { return s.ctx }

func (s *deltaStream) Send(r *discovery.DeltaDiscoveryResponse) error {
	return s.h.send(func() error { return s.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Send(r) })
}
